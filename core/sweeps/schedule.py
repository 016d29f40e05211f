"""Which variants share a forward pass: batches of cells sized by cost and memory.

Within a block every variant starts at the same position ``start`` (it recomputes positions
``start..`` and reuses the corrupted keys/values before it) and joins the batch at its own
entry block, so a block runs each layer once for all the variants that have joined by then.

Variants that patch different positions can share a block at the smallest of their starts
(the later ones recompute a few positions whose values equal the corrupted run's). Whether
that pays is a cost model: each block call costs ``overhead`` token-layers (kernel
launches, Python, reading the layer's weights, the low efficiency of thin matmuls) plus
one per token-layer computed. A dynamic program over the sorted start positions picks the
merges with the lowest total. The overhead is estimated per model and device (tens of
token-layers for GPT-2-small on a 2-core CPU, hundreds for an 8B model on a GPU, more for
tiny models); the measurements behind the constants are in docs/patching.md.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from telelens.core.sweeps.sites import Entry

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

_MAX_MERGE_WIDTH = 64  # start positions considered for one block (keeps the program O(n * 64))


@dataclass
class CellBatch:
    """Cells whose patched variants run in one batch: all start at ``start``; ``entries`` sorted
    by entry block."""

    start: int
    entries: list[Entry]


def default_memory_budget(device: torch.device) -> int:
    """Bytes one block of variants may use: half the free GPU memory, or a quarter of free RAM (<= 4 GiB)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 4 << 30
    return int(min(4 << 30, max(256 << 20, avail // 4)))


def layer_params(model: HookedTransformer) -> int:
    cfg = model.cfg
    nkv = int(cfg.n_key_value_heads or cfg.n_heads)
    attn = (cfg.n_heads + 2 * nkv) * cfg.d_head * cfg.d_model + cfg.n_heads * cfg.d_head * cfg.d_model
    mlp = 0 if cfg.attn_only else (3 if cfg.gated_mlp else 2) * int(cfg.d_mlp or 0) * cfg.d_model
    return attn + mlp


def default_overhead(model: HookedTransformer, device: torch.device) -> float:
    """Cost of one block call in token-layers: fixed time x throughput / FLOPs per token-layer."""
    params = max(1, layer_params(model))
    elt = torch.empty((), dtype=model.cfg.dtype).element_size()
    if device.type == "cuda":
        fixed_s, flops = 2.5e-4 + params * elt / 2.0e12, 3.0e14  # launches + reading the weights
    else:  # measured on 2 cores: small matmuls run far below peak, so a call costs ~4 ms of peak work
        fixed_s, flops = 4.0e-3, 1.0e11
    return fixed_s * flops / (2.0 * params)


def variant_bytes(model: HookedTransformer, batch: int, q_len: int, n_pos: int, n_logits: int) -> int:
    """Rough peak bytes one variant adds to a block (activations of the widest layer + logits)."""
    cfg = model.cfg
    elt = torch.empty((), dtype=cfg.dtype).element_size()
    nkv = int(cfg.n_key_value_heads or cfg.n_heads)
    d_mlp = 0 if cfg.attn_only else int(cfg.d_mlp or 0) * (3 if cfg.gated_mlp else 2)
    per_token = 8 * cfg.d_model + d_mlp + 3 * (cfg.n_heads + 2 * nkv) * cfg.d_head + 2 * cfg.n_heads * n_pos
    kv = 4 * n_pos * nkv * cfg.d_head
    logits = 3 * n_logits * cfg.d_vocab_out
    return batch * elt * (q_len * per_token + kv + logits)


def plan_batches(
    model: HookedTransformer,
    entries: list[Entry],
    batch: int,
    n_pos: int,
    n_logits: int,
    budget: int,
    overhead: float,
    merge: bool = True,
) -> list[CellBatch]:
    """Batches of variants, cheapest first by the cost model, each within ``budget`` bytes."""
    n_layers = model.cfg.n_layers
    by_start: dict[int, list[Entry]] = defaultdict(list)
    for e in entries:
        by_start[e.start].append(e)
    starts = sorted(by_start)
    if not starts:
        return []

    def max_variants(start: int) -> int:
        return max(1, budget // max(1, variant_bytes(model, batch, n_pos - start, n_pos, n_logits)))

    # Per start group: cells, layer-visits (sum of layers each variant runs), earliest entry.
    cells = [len(by_start[s]) for s in starts]
    visits = [sum(n_layers - e.entry for e in by_start[s]) for s in starts]
    first = [min(e.entry for e in by_start[s]) for s in starts]

    def cost(i: int, j: int) -> float:
        """Groups i..j merged into blocks starting at starts[i]."""
        s = starts[i]
        n_cells = sum(cells[i : j + 1])
        pieces = math.ceil(n_cells / max_variants(s))
        calls = pieces * (n_layers - min(first[i : j + 1]) + 1)  # +1: the final norm and unembed
        return overhead * calls + batch * (n_pos - s) * sum(visits[i : j + 1])

    g = len(starts)
    best = [0.0] * (g + 1)
    cut = [0] * (g + 1)
    for j in range(g):
        best[j + 1], cut[j + 1] = best[j] + cost(j, j), j
        if merge:
            for i in range(max(0, j - _MAX_MERGE_WIDTH), j):
                c = best[i] + cost(i, j)
                if c < best[j + 1]:
                    best[j + 1], cut[j + 1] = c, i
    ranges = []
    j = g
    while j > 0:
        i = cut[j]
        ranges.append((i, j - 1))
        j = i
    batches = []
    for i, j in reversed(ranges):
        s = starts[i]
        members = sorted((e for k in range(i, j + 1) for e in by_start[starts[k]]), key=lambda e: e.entry)
        size = max_variants(s)
        pieces = math.ceil(len(members) / size)
        per_piece = math.ceil(len(members) / pieces)  # even pieces: no tiny tail block
        for k in range(0, len(members), per_piece):
            batches.append(CellBatch(s, members[k : k + per_piece]))
    return batches
