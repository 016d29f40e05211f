"""The fast patching engine: many patched variants per forward pass, resumed from the corrupted run.

For every cell of a sweep the result must equal one full forward pass of the corrupted
tokens with that cell patched from the clean run. The engine gets there with less work:

1. The corrupted tokens run once, keeping the residual stream entering every block, every
   block's keys and values, its logits, and the few activations the patches need.
2. Each cell becomes an :class:`~telelens.core.sweeps.sites.Entry`: the block where its
   patched run first differs from the corrupted one, and the first position that differs.
   Residual patches enter at their block; patches of ``resid_mid``/``attn_out``/``mlp_out``/
   ``z``/``pattern``/MLP neurons are turned into the next block's residual directly (only
   the patched positions' MLP and output projection run); any other hook is patched by a
   hook inside its block.
3. Variants run in blocks (:mod:`~telelens.core.sweeps.schedule`), stacked along the batch
   dimension. A block walks the layers once; at each layer the variants entering there
   join the batch. Positions before the block's start reuse the corrupted keys/values
   (causal attention: they cannot change), so only later positions are computed.
4. Positions after the last one the metric reads are never computed; only the metric's
   positions are normalized and unembedded. The metric runs once per variant on a buffer
   shaped like the corrupted logits (:mod:`~telelens.core.sweeps.metric`).

:class:`SweepUnsupported` is raised (before any forward pass) when a sweep needs the plain
loop: the callers in :mod:`telelens.core.patching` and the graph executor fall back to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from telelens.core.components.attention import AttentionContext, LayerKVCache
from telelens.core.sweeps.corrupted import CorruptedRun, record_corrupted
from telelens.core.sweeps.direct import DirectEntries, Gather, corrupted_hooks
from telelens.core.sweeps.metric import LogitPositions, Metric, MetricBuffer, resolve_positions
from telelens.core.sweeps.schedule import CellBatch, default_memory_budget, default_overhead, plan_batches
from telelens.core.sweeps.setters import PatchSetter
from telelens.core.sweeps.sites import (
    Entry,
    PatchSite,
    SweepUnsupported,
    hook_index,
    plan_site,
    pos_dim,
)
from telelens.lens.hook_shapes import hook_shape_pattern

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

CleanSource = Callable[[str], torch.Tensor]
"""Hook name -> the clean run's activation there ([batch, ...], the corrupted batch size)."""


@dataclass
class SweepOptions:
    """Knobs of the fast engine (the defaults suit both CPU and GPU).

    Attributes:
        logit_positions: Positions whose logits the metric reads: ``"auto"`` (probe the
            metric on the corrupted logits), ``"all"``, or a list (negatives allowed).
        memory_budget: Bytes one block of variants may use (default: half the free GPU
            memory, or a quarter of the free RAM up to 4 GiB).
        overhead: Cost of one block call in token-layers, for merging start positions
            (default: estimated from the layer size and the device).
        merge: Let variants with different start positions share a block when it pays.
    """

    logit_positions: LogitPositions = "auto"
    memory_budget: int | None = None
    overhead: float | None = None
    merge: bool = True


def has_active_hooks(model: HookedTransformer) -> bool:
    """True when some hook function is attached (the engine calls blocks directly: it falls back)."""
    return any(hp.active or hp.bwd_hooks for hp in model.hook_dict.values())


def sweep_sites(
    model: HookedTransformer,
    tokens: torch.Tensor,
    activation: Callable[[int], str],
    sites: Sequence[PatchSite],
    clean: CleanSource,
    metric: Metric,
    *,
    attention_mask: torch.Tensor | None = None,
    setter: PatchSetter | None = None,
    options: SweepOptions | None = None,
    progress: Callable[[int], Any] | None = None,
) -> torch.Tensor:
    """The metric of every patched variant, float32 [len(sites)], on the unembed's device.

    Args:
        model: The model (no hooks attached).
        tokens: Corrupted tokens [batch, pos].
        activation: Layer -> the hook patched at that layer.
        sites: The cells.
        clean: Hook name -> clean activation with the batch dim.
        metric: Logits [batch, pos, d_vocab_out] -> scalar.
        attention_mask: The corrupted run's mask ([batch, pos]; left padding allowed).
        setter: A TransformerLens patch setter the engine cannot read: it is called inside
            the hook with ``site.raw`` for each variant (every position recomputed).
        options: See :class:`SweepOptions`.
        progress: Called with the number of cells finished, after each block of cells.

    Raises:
        SweepUnsupported: before any forward pass, when only the plain loop can run it.
    """
    if has_active_hooks(model):
        raise SweepUnsupported("the model has hooks attached")
    entries = [
        plan_site(model, activation(site.layer), site, i, custom=setter is not None)
        for i, site in enumerate(sites)
    ]
    if tokens.dim() == 1:
        tokens = tokens[None]
    with torch.inference_mode():
        engine = _Engine(model, tokens, attention_mask, entries, sites, clean, metric, setter, options)
        return engine.run(progress)


class _Engine:
    def __init__(
        self,
        model: HookedTransformer,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor | None,
        entries: list[Entry],
        sites: Sequence[PatchSite],
        clean: CleanSource,
        metric: Metric,
        setter: PatchSetter | None,
        options: SweepOptions | None,
    ) -> None:
        self.model, self.cfg = model, model.cfg
        self.entries, self.sites, self.clean_source, self.setter = entries, sites, clean, setter
        self.options = options or SweepOptions()
        device = model._module_device(model.embed)
        tokens = tokens.to(device)
        if attention_mask is not None:
            attention_mask = (attention_mask[None] if attention_mask.dim() == 1 else attention_mask).to(
                device
            )
        self.corr: CorruptedRun = record_corrupted(
            model, tokens, attention_mask, corrupted_hooks(model, entries)
        )
        self.direct = DirectEntries(model, self.corr, self.clean)
        self.batch = self.corr.batch
        positions = resolve_positions(metric, self.corr.logits, self.options.logit_positions)
        self.buffer = MetricBuffer(metric, self.corr.logits, positions)
        # Positions after the last one the metric reads never influence it (causal attention).
        # A custom setter may index any position: keep them all.
        self.n_eff = self.corr.n_pos if setter is not None else (max(positions) + 1 if positions else 0)
        self.positions = positions
        self._ctx_cache: dict[tuple[Any, ...], AttentionContext] = {}
        self._clean_cache: dict[str, torch.Tensor] = {}

    def clean(self, hook: str, device: torch.device) -> torch.Tensor:
        t = self._clean_cache.get(hook)
        if t is None or t.device != device:
            t = self.clean_source(hook).to(device)
            if t.shape[0] == 1 and self.batch > 1:
                t = t.expand(
                    self.batch, *t.shape[1:]
                )  # one clean prompt for every row, as a setter broadcasts
            elif t.shape[0] != self.batch:
                raise ValueError(
                    f"the clean activation {hook} has batch {t.shape[0]}, the corrupted tokens {self.batch}"
                )
            self._clean_cache[hook] = t
        return t

    # ------------------------------------------------------------------ run
    def run(self, progress: Callable[[int], Any] | None) -> torch.Tensor:
        baseline = self.buffer.baseline()
        out = baseline.repeat(len(self.entries))
        todo = [e for e in self.entries if e.start < self.n_eff]
        skipped = len(self.entries) - len(todo)
        if skipped and progress is not None:
            progress(skipped)  # cells after every position the metric reads: the corrupted metric
        opts = self.options
        device = self.corr.resid[0].device
        budget = opts.memory_budget or default_memory_budget(device)
        overhead = opts.overhead if opts.overhead is not None else default_overhead(self.model, device)
        batches = plan_batches(
            self.model, todo, self.batch, self.n_eff, len(self.positions), budget, overhead, opts.merge
        )
        for cells in batches:
            values = self._run_batch(cells)
            for e, v in zip(cells.entries, values):
                out[e.site] = v
            if progress is not None:
                progress(len(cells.entries))
        return out

    def _run_batch(self, cells: CellBatch) -> list[torch.Tensor]:
        n_layers, s = self.cfg.n_layers, cells.start
        entries = cells.entries
        rows: list[Entry] = []
        resid: torch.Tensor | None = None
        s_out = s  # first position of ``resid`` (the last block may drop leading positions)
        i = 0
        for layer in range(entries[0].entry, n_layers + 1):
            joining = []
            while i < len(entries) and entries[i].entry == layer:
                joining.append(entries[i])
                i += 1
            hooks: list[tuple[str, Any]] = []
            if joining:
                new, hooks = self._join(joining, layer, s, len(rows) * self.batch)
                new = new[:, s_out - s :]  # after a trimmed last block: its positions only
                if resid is None:
                    resid = new
                else:
                    resid = torch.cat((resid, new.to(resid.device)))
                rows.extend(joining)
            if layer == n_layers - 1 and not hooks and self._can_trim():
                assert resid is not None
                resid, s_out = self._last_block(layer, resid, s)
            elif layer < n_layers:
                assert resid is not None
                resid, s_out = self._block(layer, resid, s, hooks), s
        assert resid is not None
        return self.buffer.evaluate(s, self._logits(resid, s_out), self.batch)

    def _logits(self, resid: torch.Tensor, s: int) -> torch.Tensor:
        """Logits at the metric's positions >= s: [rows, k, vocab]."""
        model = self.model
        offsets = [p - s for p in self.positions if p >= s]
        x = resid[:, offsets]
        if model.ln_final is not None:
            x = model.ln_final(x.to(model._module_device(model.ln_final)))
        return model.unembed(x.to(model.unembed.weight.device))

    # ------------------------------------------------------------------ layers
    def _context(self, rows: int, s: int, device: torch.device, q: int | None = None) -> AttentionContext:
        """Mask and rotary tables for ``q`` positions from ``s`` (default: up to n_eff) after ``s`` cached ones."""
        q = self.n_eff - s if q is None else q
        key = (rows, s, q, device)
        ctx = self._ctx_cache.get(key)
        if ctx is None:
            reps = rows // self.batch
            mask = self.corr.attention_mask
            new = None if mask is None else mask[:, s : s + q].repeat(reps, 1)
            past = None
            if s > 0:
                prev = None if mask is None else mask[:, :s].repeat(reps, 1)
                past = SimpleNamespace(past_length=s, previous_attention_mask=prev)
            ctx, _ = self.model._attention_context(rows, q, new, past, device)  # type: ignore[arg-type]
            if len(self._ctx_cache) > 16:
                self._ctx_cache.clear()
            self._ctx_cache[key] = ctx
        return ctx

    def _past(self, layer: int, s: int, rows: int) -> LayerKVCache | None:
        """The corrupted keys/values of positions < s, one copy per variant."""
        if s == 0:
            return None
        reps = rows // self.batch
        cache = LayerKVCache()
        cache.k = self.corr.keys[layer][:, :s].repeat(reps, 1, 1, 1)
        cache.v = self.corr.values[layer][:, :s].repeat(reps, 1, 1, 1)
        return cache

    def _block(self, layer: int, resid: torch.Tensor, s: int, hooks: list[tuple[str, Any]]) -> torch.Tensor:
        model = self.model
        block = model.blocks[layer]
        device = model._module_device(block)
        resid = resid.to(device)
        rows = int(resid.shape[0])
        ctx = self._context(rows, s, device)
        cache = self._past(layer, s, rows)
        if hooks:
            with model.hooks(fwd_hooks=hooks):
                return block(resid, past_kv_cache_entry=cache, ctx=ctx)
        return block(resid, past_kv_cache_entry=cache, ctx=ctx)

    def _can_trim(self) -> bool:
        cfg = self.cfg
        return not (cfg.use_split_qkv_input or cfg.use_attn_in) and self.setter is None

    def _last_block(self, layer: int, resid: torch.Tensor, s: int) -> tuple[torch.Tensor, int]:
        """The last block, computing outputs only from the metric's first position on.

        Positions between ``s`` and that one only feed the last block's keys and values:
        those are projected directly (no query, attention output or MLP for them).
        Returns the residual and its first position.
        """
        first = min(p for p in self.positions if p >= s)
        f = first - s
        if f == 0:
            return self._block(layer, resid, s, []), s
        block = self.model.blocks[layer]
        device = self.model._module_device(block)
        resid = resid.to(device)
        rows = int(resid.shape[0])
        k, v = block.keys_values(resid[:, :f], self._context(rows, s, device, q=f))
        cache = LayerKVCache()
        past = self._past(layer, s, rows)
        if past is not None:
            cache.append(past.k, past.v)  # type: ignore[arg-type]
        cache.append(k, v)
        ctx = self._context(rows, first, device)
        return block(resid[:, f:], past_kv_cache_entry=cache, ctx=ctx), first

    # ------------------------------------------------------------------ entries
    def _join(
        self, joining: list[Entry], layer: int, s: int, row0: int
    ) -> tuple[torch.Tensor, list[tuple[str, Any]]]:
        """The residual of the variants joining at ``layer`` ([V * batch, n_eff - s, d_model]), and hooks."""
        b, q = self.batch, self.n_eff - s
        base = self.corr.resid[layer][:, s : self.n_eff]  # [batch, q, d_model]
        V = len(joining)
        entry = base.unsqueeze(0).expand(V, *base.shape).clone()  # [V, batch, q, d_model]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for v, e in enumerate(joining):
            sig = (e.kind, e.hook, e.pos is None, e.unit is None, e.src is None)
            groups.setdefault(sig, []).append(v)
        hooks = []
        for (kind, hook, all_pos, _, _), members in groups.items():
            group = [joining[v] for v in members]
            if kind == "hook":
                hooks.append((hook, self._patch_hook(hook, group, members, row0, s)))
                continue
            idx = torch.tensor(members, device=entry.device)
            if all_pos:
                gather = Gather(None, self.n_eff, len(group), entry.device)
            else:
                pos = torch.tensor([e.pos for e in group], device=entry.device)
                gather = Gather(pos, 0, len(group), entry.device)
            if kind == "resid":
                vals = gather(self.clean(hook, entry.device))
            else:
                vals = self.direct.resid_post(hook, layer - 1, group, gather)
            vals = vals.to(entry.dtype)
            if all_pos:
                entry[idx] = vals  # s == 0, q == n_eff
            else:
                assert gather.pos is not None
                entry[idx, :, gather.pos - s] = vals[:, :, 0]
        return entry.reshape(V * b, q, -1), hooks

    def _patch_hook(
        self, name: str, group: list[Entry], members: list[int], row0: int, s: int
    ) -> Callable[..., torch.Tensor]:
        """A hook writing each variant's clean slice into its own rows of the batch."""
        b, n_eff = self.batch, self.n_eff
        p_dim = pos_dim(name)
        dims = hook_shape_pattern(name)
        key_dim = dims.index("key_pos") if "key_pos" in dims else None
        setter = self.setter

        def patch(act: torch.Tensor, hook: Any) -> torch.Tensor:
            act = act.clone(memory_format=torch.contiguous_format)
            clean = self.clean(name, act.device)
            if setter is None:  # the slice the positions of this pass cover
                window: list[Any] = [slice(None)] * clean.dim()
                if p_dim is not None:
                    window[p_dim] = slice(s, n_eff)
                if key_dim is not None:
                    window[key_dim] = slice(0, n_eff)
                clean = clean[tuple(window)]
            for v, e in zip(members, group):
                r = row0 + v * b
                if setter is not None:
                    site = self.sites[e.site]
                    assert site.raw is not None
                    act[r : r + b] = setter(act[r : r + b].clone(), list(site.raw), clean)
                    continue
                index = hook_index(name, self.sites[e.site].index, s)
                key = index[key_dim] if key_dim is not None and key_dim < len(index) else None
                if isinstance(key, int) and key >= n_eff:
                    continue  # a key no position of this pass attends to
                act[r : r + b][index] = clean[index].to(act.dtype)
            return act

        return patch
