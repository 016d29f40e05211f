"""Direct entries: a patch inside block ``L`` turned straight into the residual stream leaving it.

Patches of ``resid_mid``, ``attn_out``, ``mlp_out``, ``z``, attention-pattern rows and MLP
neurons change block ``L``'s output only through a few cheap steps (an output projection,
the MLP of the patched positions). :class:`DirectEntries` computes the patched
``resid_post`` at the patched positions from the corrupted run, through the block's own
methods (:meth:`~telelens.core.components.block.TransformerBlock.after_attn` and
friends), so it computes exactly what the forward pass computes; the variant then joins the
batch at block ``L + 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch

from telelens.core.sweeps.corrupted import CorruptedRun
from telelens.core.sweeps.sites import Entry

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer


class Gather:
    """Positions of a group of ``count`` variants: one each (``pos`` [count]) or the first ``n`` (all).

    ``g(t)`` maps an activation [batch, pos, ...] to [count, batch, k, ...] (k = 1 or n).
    """

    def __init__(self, pos: torch.Tensor | None, n: int, count: int, device: torch.device) -> None:
        self.pos, self.n, self.count, self.device = pos, n, count, device

    def to(self, device: torch.device) -> Gather:
        if device == self.device:
            return self
        return Gather(None if self.pos is None else self.pos.to(device), self.n, self.count, device)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device)
        if self.pos is None:
            head = t[:, : self.n]
            return head.unsqueeze(0).expand(self.count, *head.shape)
        return t[:, self.pos].movedim(1, 0).unsqueeze(2)


def corrupted_hooks(model: HookedTransformer, entries: Iterable[Entry]) -> set[str]:
    """The corrupted activations the direct entries among ``entries`` read."""
    out: set[str] = set()
    for e in entries:
        if e.kind != "post":
            continue
        L = e.entry - 1
        out.add(f"blocks.{L}.attn.hook_z")
        if not model.cfg.attn_only:
            out.update({f"blocks.{L}.hook_attn_out", f"blocks.{L}.hook_mlp_out"})
        if e.hook.endswith("mlp.hook_post"):
            out.add(e.hook)
        if e.hook.endswith("attn.hook_pattern") and e.src is not None:
            out.add(e.hook)
    return out


class DirectEntries:
    """Patched ``resid_post`` values of direct entries, from the corrupted run and the clean source."""

    def __init__(
        self,
        model: HookedTransformer,
        corr: CorruptedRun,
        clean: Callable[[str, torch.device], torch.Tensor],
    ) -> None:
        self.model, self.corr, self.clean = model, corr, clean

    def resid_post(self, hook: str, L: int, group: list[Entry], g: Gather) -> torch.Tensor:
        """The residual leaving block ``L`` at the gathered positions, with the patch applied: [V, b, k, d]."""
        block = self.model.blocks[L]
        device = self.model._module_device(block)
        acts = self.corr.acts
        V = len(group)
        ar = torch.arange(V, device=device)
        units = None if group[0].unit is None else torch.tensor([e.unit for e in group], device=device)
        srcs = None if group[0].src is None else torch.tensor([e.src for e in group], device=device)
        g = g.to(device)
        if hook.endswith("hook_resid_mid"):
            mid = g(self.clean(hook, device))
            flat = mid.reshape(-1, *mid.shape[-2:])  # [V * b, k, d_model]
            return block.after_resid_mid(flat).reshape(mid.shape)
        if hook.endswith("hook_attn_out"):
            return self._after_attn(L, g, g(self.clean(hook, device)))
        if hook.endswith("hook_mlp_out"):
            return self._after_mlp(L, g, g(self.clean(hook, device)))
        if hook.endswith("attn.hook_z"):
            clean_z = g(self.clean(hook, device))  # [V, b, k, n_heads, d_head]
            if units is None:
                z = clean_z
            else:
                z = g(acts[f"blocks.{L}.attn.hook_z"]).clone()
                z[ar, :, :, units] = clean_z[ar, :, :, units]
            return self._after_attn(L, g, block.attn.output(z))
        if hook.endswith("attn.hook_pattern"):
            z = self._pattern_z(hook, L, g, ar, units, srcs)
            return self._after_attn(L, g, block.attn.output(z))
        if hook.endswith("mlp.hook_post"):
            mlp = block.mlp
            if units is None:
                m = mlp.output(g(self.clean(hook, device)))
            else:
                clean_u = g(self.clean(hook, device))[ar, :, :, units]  # [V, b, k]
                corr_u = g(acts[hook])[ar, :, :, units]
                rows = mlp.W_out[units][:, None, None, :]  # [V, 1, 1, d_model]
                m = g(acts[f"blocks.{L}.hook_mlp_out"]) + (clean_u - corr_u)[..., None].to(rows.dtype) * rows
            return self._after_mlp(L, g, m)
        raise AssertionError(f"no direct update for {hook}")

    def _pattern_z(
        self,
        hook: str,
        L: int,
        g: Gather,
        ar: torch.Tensor,
        units: torch.Tensor | None,
        srcs: torch.Tensor | None,
    ) -> torch.Tensor:
        """z at the gathered query positions with the patched pattern rows: [V, b, k, n_heads, d_head]."""
        device = ar.device
        attn = self.model.blocks[L].attn
        v = attn.repeat_kv_heads(self.corr.values[L].to(device), dim=2)  # [b, pos, n_heads, d_head]
        by_query = self.clean(hook, device).transpose(1, 2)  # [b, query, head, key]
        clean_rows = g(by_query)  # [V, b, k, n_heads, key]
        corr_rows = None
        if srcs is not None:
            corr_rows = g(self.corr.acts[hook].to(device).transpose(1, 2))
        if units is None:
            if srcs is None:
                rows = clean_rows
            else:
                assert corr_rows is not None
                rows = corr_rows.clone()
                rows[ar, :, :, :, srcs] = clean_rows[ar, :, :, :, srcs]
            return torch.einsum("vbqhk,bkhd->vbqhd", rows.to(v.dtype), v)
        if srcs is None:
            row = clean_rows[ar, :, :, units]  # [V, b, k, key]
        else:
            assert corr_rows is not None
            row = corr_rows[ar, :, :, units].clone()
            row[ar, :, :, srcs] = clean_rows[ar, :, :, units, srcs]
        vh = v[:, :, units].permute(2, 0, 1, 3)  # [V, b, key, d_head]
        z = g(self.corr.acts[f"blocks.{L}.attn.hook_z"].to(device)).clone()
        z[ar, :, :, units] = row.to(v.dtype) @ vh
        return z

    def _after_attn(self, L: int, g: Gather, attn_out: torch.Tensor) -> torch.Tensor:
        mlp_out = self.corr.acts.get(f"blocks.{L}.hook_mlp_out")
        return self.model.blocks[L].after_attn(
            g(self.corr.resid[L]), attn_out, None if mlp_out is None else g(mlp_out)
        )

    def _after_mlp(self, L: int, g: Gather, mlp_out: torch.Tensor) -> torch.Tensor:
        acts = self.corr.acts
        return self.model.blocks[L].after_mlp(
            g(self.corr.resid[L]), g(acts[f"blocks.{L}.hook_attn_out"]), mlp_out
        )
