"""Patch sites (the cells of a sweep) and how each one re-enters the forward pass.

A :class:`PatchSite` names one cell: a layer and an index into that layer's activation
(after the batch dimension). Planning turns it into a :class:`Entry`: the block where the
patched variant joins the batch, the first position it must recompute, and how its
residual stream is built there.

Why ``start`` may be > 0: attention is causal, so patching position ``p`` of any
activation changes nothing at positions ``< p``, in this layer or later ones. Those
positions keep the corrupted run's keys and values (reused from its KV cache) and only
positions ``>= p`` are recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from telelens.lens.hook_shapes import hook_shape_pattern

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

EntryKind = Literal["resid", "post", "hook"]

# Hook suffixes patched by a direct computation of the next residual stream (no hook, no
# recomputation of the patched block): their effect on resid_post is cheap to evaluate.
POST_SUFFIXES = ("hook_resid_mid", "hook_attn_out", "hook_mlp_out", "attn.hook_z", "attn.hook_pattern")
NEURON_SUFFIX = "mlp.hook_post"


class SweepUnsupported(Exception):
    """The fast engine cannot run this sweep; the caller falls back to one pass per cell."""


@dataclass(frozen=True)
class PatchSite:
    """One cell: copy the clean activation into the corrupted run at ``layer``, ``index``.

    ``index`` covers the activation's dims after the batch dim, in order, one entry per dim
    (``None``: the whole dim; missing trailing entries: whole). For ``[batch, pos, head, d]``
    hooks ``(p, h)`` patches position ``p`` of head ``h``; for patterns ``[batch, head,
    query_pos, key_pos]`` ``(h, q)`` patches the row of query ``q`` of head ``h``.
    ``raw`` is the TransformerLens index handed to a custom patch setter (custom setters only).
    """

    layer: int
    index: tuple[int | None, ...] = ()
    raw: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Entry:
    """How one site re-enters the forward pass."""

    site: int  # position of the site in the request (its slot in the output)
    hook: str  # the patched hook point
    entry: int  # block where the variant joins (n_layers: straight to ln_final/unembed)
    start: int  # first position recomputed (positions before it equal the corrupted run)
    kind: EntryKind
    pos: int | None  # the patched position (None: every position)
    unit: int | None  # head / neuron (None: all of them)
    src: int | None  # key position of a pattern entry (pattern patches only)


def _block_of(hook: str) -> int | None:
    parts = hook.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None


def pos_dim(hook: str) -> int | None:
    """Index (in the full activation, batch = 0) of the position / query-position dim."""
    dims = hook_shape_pattern(hook)
    return next((i for i, d in enumerate(dims) if d in ("pos", "query_pos")), None)


def plan_site(model: HookedTransformer, hook: str, site: PatchSite, number: int, custom: bool) -> Entry:
    """The entry of one site; raises :class:`SweepUnsupported` when only the naive loop can run it."""
    cfg = model.cfg
    layer = site.layer
    if _block_of(hook) != layer or not 0 <= layer < cfg.n_layers:
        raise SweepUnsupported(f"{hook} is not a hook of block {layer}")
    if hook not in model.hook_dict:
        raise SweepUnsupported(f"unknown hook {hook}")
    if custom:  # a setter we cannot read: patch in a hook, every position recomputed
        return Entry(number, hook, layer, 0, "hook", None, None, None)

    dims = hook_shape_pattern(hook)
    index = tuple(site.index) + (None,) * (len(dims) - 1 - len(site.index))
    if len(index) != len(dims) - 1:
        raise SweepUnsupported(f"index {site.index} has more entries than {hook} has dims")
    p_dim = pos_dim(hook)
    pos = index[p_dim - 1] if p_dim is not None else None
    start = pos if pos is not None else 0
    suffix = hook.split(".", 2)[-1]
    is_pattern = dims[1:3] == ("head_index", "query_pos")
    last = dims[-1]
    tail = index[-1] if not is_pattern else None  # an index into d_model / d_head / d_mlp

    def entry(kind: EntryKind, at: int, unit: int | None = None, src: int | None = None) -> Entry:
        return Entry(number, hook, at, start, kind, pos, unit, src)

    if suffix in ("hook_resid_pre", "hook_resid_post") and dims == ("batch", "pos", "d_model"):
        if tail is None:
            return entry("resid", layer if suffix == "hook_resid_pre" else layer + 1)
    elif suffix in POST_SUFFIXES and _post_ok(model, suffix):
        if suffix == "attn.hook_z" and index[2] is None:
            return entry("post", layer + 1, unit=index[1])
        if suffix == "attn.hook_pattern":
            return entry("post", layer + 1, unit=index[0], src=index[2])
        if suffix not in ("attn.hook_z", "attn.hook_pattern") and last == "d_model" and tail is None:
            return entry("post", layer + 1)
    elif suffix == NEURON_SUFFIX and not cfg.attn_only:
        return entry("post", layer + 1, unit=index[1])
    return entry("hook", layer)


def _post_ok(model: HookedTransformer, suffix: str) -> bool:
    """Whether the direct resid_post computation for ``suffix`` matches this architecture."""
    cfg = model.cfg
    if suffix == "hook_resid_mid":
        return not cfg.parallel_attn_mlp and not cfg.attn_only  # attn-only: resid_mid never fires
    if suffix == "hook_mlp_out":
        return not cfg.attn_only
    return True


def hook_index(hook: str, index: tuple[int | None, ...], start: int) -> tuple[Any, ...]:
    """A torch index for ``index`` into an activation whose position dim starts at ``start``."""
    dims = hook_shape_pattern(hook)
    p_dim = pos_dim(hook)
    out: list[Any] = [slice(None)]
    for d, i in enumerate(index, start=1):
        if d >= len(dims):
            break
        if i is None:
            out.append(slice(None))
        else:
            out.append(i - start if d == p_dim else i)
    return tuple(out)
