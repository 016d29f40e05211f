"""Proxies: Python objects that stand for values of an intervention graph while it is built.

- :class:`RunProxy` is a forward pass: ``run["blocks.3.hook_resid_post"]``, ``run.logits``.
- :class:`HookProxy` is one activation of one run. Using it as a value appends an
  ``ir.Read`` at that point of the program (a read after a write sees the written value);
  assigning into it (``hook[:, -1] = v``, ``hook[:, -1] += v``) appends an ``ir.Write``.
- :class:`WeightProxy` is a model weight by name (``t.W_O[3]`` reads one layer's copy).
- :class:`ValueProxy` (any other node) and :class:`Saved` (what ``save`` returns) live in
  :mod:`telelens.trace.values`; they are re-exported here, the proxies' public import path.

Proxies are values, not views: ``x = run[h][:, -1]; x += 1`` makes a new value and leaves the
activation alone. Only an assignment through ``run[h]`` or ``run[h][idx]`` changes the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from telelens.protos import ir
from telelens.trace.graph import GraphBuilder
from telelens.trace.values import (
    _WHOLE,
    Saved,
    ValueProxy,
    _as_tensor,
    _Origin,
    dtype_name,
    save,
    to_index,
    to_operand,
)

__all__ = [
    "MODEL_WEIGHTS",
    "STACKED_WEIGHTS",
    "HookProxy",
    "RunProxy",
    "Saved",
    "StackedWeightProxy",
    "ValueProxy",
    "WeightProxy",
    "dtype_name",
    "make_run",
    "save",
    "to_index",
    "to_operand",
    "weight_proxy",
]

# Stacked weights ([n_layers, ...] like TransformerLens's model.W_O) and where their per-layer
# copy lives: t.W_O[3] becomes Weight("blocks.3.attn.W_O"), which the executor reads without
# stacking every layer.
STACKED_WEIGHTS: dict[str, str] = {
    **{n: "attn" for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")},
    **{n: "mlp" for n in ("W_in", "W_gate", "W_out", "b_in", "b_out")},
}
MODEL_WEIGHTS = ("W_U", "b_U", "W_E", "W_pos", "W_E_pos")


class WeightProxy(ValueProxy):
    """A model weight by name; its node is added on first use."""

    def __init__(self, builder: GraphBuilder, name: str) -> None:
        super().__init__(builder, None)
        self.name = name

    def _ref(self) -> int:
        return self._builder.weight(self.name)

    def __repr__(self) -> str:
        return f"<WeightProxy {self.name}>"


class StackedWeightProxy(WeightProxy):
    """A weight stacked over layers (``W_O`` is [n_layers, n_heads, d_head, d_model]).

    Indexing the layer with an int (``t.W_O[3]``, ``t.W_O[3, 0]``) fetches the per-layer
    weight ``blocks.3.attn.W_O`` instead of stacking all layers on the server.
    """

    def __init__(self, builder: GraphBuilder, name: str, module: str) -> None:
        super().__init__(builder, name)
        self.module = module

    def __getitem__(self, idx: Any) -> ValueProxy:
        items = idx if isinstance(idx, tuple) else (idx,)
        layer = items[0] if items else None
        if isinstance(layer, int) and not isinstance(layer, bool):
            n_layers = getattr(self._builder.cfg, "n_layers", None)
            if layer < 0 and n_layers is not None:
                layer += n_layers
            if layer >= 0 and (n_layers is None or layer < n_layers):
                per_layer = WeightProxy(self._builder, f"blocks.{layer}.{self.module}.{self.name}")
                return per_layer[items[1:]] if len(items) > 1 else per_layer
            if n_layers is not None:
                raise IndexError(f"layer {items[0]} out of range for {self.name} with {n_layers} layers")
        return super().__getitem__(idx)


def weight_proxy(builder: GraphBuilder, name: str) -> WeightProxy:
    """``W_O`` -> a stacked proxy (per-layer on int index); anything else -> a plain one."""
    if name in STACKED_WEIGHTS:
        return StackedWeightProxy(builder, name, STACKED_WEIGHTS[name])
    return WeightProxy(builder, name)


class HookProxy(ValueProxy):
    """One activation of one run. Reading appends a Read; assigning into it appends a Write."""

    def __init__(self, run: RunProxy, hook: str) -> None:
        run._builder.check_hook(hook)
        super().__init__(run._builder, None)
        self.run = run
        self.hook = hook

    def _ref(self) -> int:
        return self._builder.read(self.run.id, self.hook)

    def __repr__(self) -> str:
        return f"<HookProxy run {self.run.id} {self.hook!r}>"

    def __getitem__(self, idx: Any) -> ValueProxy:
        b = self._builder
        mark = b.next_id
        read = self._ref()
        index = to_index(b, idx)  # constants made here stay: a folded write reuses the index
        out = ValueProxy(b, b.add(ir.Index, input=ir.Ref(read), index=index) if index else read)
        out._origin = _Origin(self, idx, index, read, read >= mark, {out._ref()} if index else set())
        return out

    def _origin_for_inplace(self) -> _Origin | None:
        # ``run[hook] += v``: the whole activation.
        mark = self._builder.next_id
        read = self._ref()
        return _Origin(self, _WHOLE, (), read, read >= mark)

    def __setitem__(self, idx: Any, value: Any) -> None:
        _assign(self, idx, value)

    def apply(self, op: Any) -> None:
        """Apply a declarative hook op here: ``run[hook].apply(ops.zero_ablate(head=3))``."""
        op.to_nodes(self._builder, self.run, self.hook)

    @property
    def grad(self) -> Any:
        """The gradient at this activation (a ``GradProxy``): of the metric given to ``metric.backward()``
        when used as a value; ``.grad[idx] = v`` / ``.grad.apply(op)`` add backward hooks."""
        from telelens.trace.backward import GradProxy

        return GradProxy(self)


def _assign(target: HookProxy, raw_index: Any, value: Any) -> None:
    """``target[raw_index] = value``: one Write, folded to add/mul for ``+=``, ``-=``, ``*=``."""
    b = target._builder
    run, hook = target.run.id, target.hook
    inplace = value._inplace if isinstance(value, ValueProxy) else None
    if inplace is not None:
        origin = inplace.origin
        same_target = (
            origin.hook.run.id == run
            and origin.hook.hook == hook
            and origin.raw_index is raw_index
            and b._reads.get((run, hook)) == origin.read  # no write to this activation since
        )
        if same_target and b.drop_if_unused(inplace.created):
            value._dead = inplace.source._dead = True
            if origin.fresh_read:  # unless the right-hand side reads it too
                b.drop_if_unused({origin.read})
            operand = inplace.operand
            if inplace.negate:
                operand = (
                    -operand
                    if isinstance(operand, float)
                    else ir.Ref(b.add(ir.Unary, op="neg", input=operand))
                )
            b.write(run, hook, operand, origin.index, inplace.mode)
            return
    operand = to_operand(b, value)
    index = () if raw_index is _WHOLE else to_index(b, raw_index)
    b.write(run, hook, operand, index, "set")


class RunProxy:
    """A forward pass: ``run[hook]`` is an activation, ``run.logits`` the output logits."""

    _NOT_A_VALUE_HINT = "use run.logits or run[hook]"

    def __init__(self, builder: GraphBuilder, run_id: int, batch_size: int | None) -> None:
        self._builder = builder
        self.id = run_id
        self.batch_size = batch_size
        """Number of sequences (known from the tokens or the list of texts)."""

    def __getitem__(self, hook: str) -> HookProxy:
        return HookProxy(self, hook)

    def __setitem__(self, hook: str, value: Any) -> None:
        """Replace a whole activation: ``run[hook] = value`` (``run[hook] += v`` adds)."""
        _assign(HookProxy(self, hook), _WHOLE, value)

    @property
    def logits(self) -> HookProxy:
        """The output logits [batch, pos, d_vocab_out]."""
        return HookProxy(self, ir.LOGITS)

    def __repr__(self) -> str:
        return f"<RunProxy {self.id} batch={self.batch_size}>"


def make_run(
    builder: GraphBuilder,
    input: str | Sequence[str] | torch.Tensor | Sequence[int] | Sequence[Sequence[int]],
    prepend_bos: bool | None = None,
    attention_mask: torch.Tensor | None = None,
) -> RunProxy:
    """A Run node over texts (tokenized by the executor) or token ids ([pos] or [batch, pos])."""
    if isinstance(input, str):
        texts: tuple[str, ...] = (input,)
    elif isinstance(input, (list, tuple)) and input and all(isinstance(s, str) for s in input):
        texts = tuple(input)
    else:
        texts = ()
    mask = None
    if attention_mask is not None:
        m = _as_tensor(attention_mask)
        if m is None:
            raise TypeError("attention_mask must be a tensor")
        mask = ir.Ref(builder.constant(m[None] if m.dim() == 1 else m))
    if texts:
        run_id = builder.add(ir.Run, text=texts, prepend_bos=prepend_bos, attention_mask=mask)
        return with_run_hooks(RunProxy(builder, run_id, len(texts)))
    tokens = _as_tensor(input)
    if tokens is None or tokens.numel() == 0:
        raise TypeError(
            "a run takes a string, a list of strings, or token ids (a [pos] or [batch, pos] int tensor)"
        )
    if tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise TypeError(f"token ids must be integers, got {tokens.dtype}")
    if tokens.dim() == 1:
        tokens = tokens[None]  # [pos] -> [1, pos]
    if tokens.dim() != 2:
        raise ValueError(f"token ids must be [pos] or [batch, pos], got shape {tuple(tokens.shape)}")
    # prepend_bos only applies to text (TransformerLens ignores it for token ids too)
    run_id = builder.add(ir.Run, tokens=ir.Ref(builder.constant(tokens)), attention_mask=mask)
    return with_run_hooks(RunProxy(builder, run_id, int(tokens.shape[0])))


def with_run_hooks(run: RunProxy) -> RunProxy:
    """``run`` with the builder's registered hooks applied (before anything else reads or writes it)."""
    for hook, op in run._builder.run_hooks:
        op.to_nodes(run._builder, run, hook)
    return run
