"""Tracer: build an intervention graph by writing ordinary-looking tensor code.

    with Tracer(backend) as t:
        clean = t.run(clean_tokens)
        corrupt = t.run(corrupt_tokens)
        corrupt["blocks.6.hook_resid_post"][:, -1] = clean["blocks.6.hook_resid_post"][:, -1]
        diff = t.save(corrupt.logits[0, -1, paris] - corrupt.logits[0, -1, rome])
    print(diff.value)

Nothing runs inside the block: every operation appends a node. When the block exits
without an exception, the graph goes to ``backend.execute`` once and the saved values
come back into their ``Saved`` handles.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch

from telelens.protos import ir
from telelens.trace.backend import GraphBackend, backend_allows_code, backend_run_hooks
from telelens.trace.graph import GraphBuilder
from telelens.trace.proxies import (
    HookProxy,
    RunProxy,
    Saved,
    ValueProxy,
    WeightProxy,
    make_run,
    save,
    weight_proxy,
)


class _WeightAttr:
    """``t.W_U``, ``t.W_O``, ...: a (lazy) weight proxy per attribute access."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, tracer: Tracer | None, owner: type) -> Any:
        if tracer is None:
            return self
        return tracer.weight(self.name)


class Tracer:
    """A context manager that records an intervention graph and runs it on exit.

    ``allow_code=True`` permits Python hook functions (``code_hook``, ``ops.python``); the
    executor (and on a server, your API key) must allow them too.
    """

    def __init__(self, backend: GraphBackend, allow_code: bool = False) -> None:
        self.backend = backend
        self.allow_code = allow_code or backend_allows_code(backend)
        self.builder = GraphBuilder(
            getattr(backend, "hook_names", None), getattr(backend, "cfg", None), allow_code=self.allow_code
        )
        self.builder.run_hooks = backend_run_hooks(backend)
        self.result: dict[str, torch.Tensor] | None = None
        """Every saved value by name, once the graph has run."""

    # ------------------------------------------------------------------ context
    def __enter__(self) -> Tracer:
        if self.builder.frozen:
            raise RuntimeError("a Tracer runs once: make a new one")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.builder.frozen = True
        if exc_type is not None:
            for handle in self.builder.handles:
                handle._fail()
            return
        try:
            result = self.backend.execute(self.graph, allow_code=self.allow_code)
        except BaseException:
            for handle in self.builder.handles:
                handle._fail()
            raise
        missing = [h.name for h in self.builder.handles if h.name not in result]
        if missing:
            raise KeyError(f"the backend returned no value for saved {missing}")
        for handle in self.builder.handles:
            handle._fill(result[handle.name])
        self.result = dict(result)

    # ------------------------------------------------------------------ model facts
    @property
    def graph(self) -> ir.Graph:
        """The graph built so far (what ``execute`` receives on exit)."""
        return self.builder.graph()

    @property
    def hook_names(self) -> list[str] | None:
        return self.builder.hook_names

    @property
    def cfg(self) -> Any:
        return self.builder.cfg

    # ------------------------------------------------------------------ building
    def run(
        self,
        input: str | Sequence[str] | torch.Tensor | Sequence[int],
        prepend_bos: bool | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> RunProxy:
        """A forward pass over text, a list of texts, or token ids ([pos] or [batch, pos])."""
        return make_run(self.builder, input, prepend_bos=prepend_bos, attention_mask=attention_mask)

    def save(self, value: Any, name: str | None = None, dtype: str | torch.dtype | None = None) -> Saved:
        """Bring ``value`` back (cast to ``dtype`` on the executor); named ``save_{n}`` by default."""
        return save(self.builder, value, name, dtype)

    def weight(self, name: str) -> WeightProxy:
        """A model weight: ``"W_U"``, ``"W_E"``, ``"W_O"`` (stacked), ``"blocks.3.attn.W_O"``, ..."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"weight names are non-empty strings, got {name!r}")
        return weight_proxy(self.builder, name)

    def constant(self, value: Any) -> ValueProxy:
        """Upload a tensor as a node (tensors used in expressions are uploaded automatically)."""
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        return ValueProxy(self.builder, self.builder.constant(tensor))

    def code_hook(self, run: RunProxy, hook: str, fn: Any) -> None:
        """Run ``fn(tensor, hook=...)`` at ``hook`` of ``run`` (needs ``allow_code=True``)."""
        if not isinstance(run, RunProxy):
            raise TypeError("code_hook(run, hook, fn): run is what t.run(...) returned")
        self.builder.code_hook(run.id, hook, fn)

    def grad(self, of: Any, wrt: HookProxy) -> ValueProxy:
        """The gradient of scalar ``of`` with respect to activation ``wrt`` (``run[hook]``), computed on
        the executor; every gradient of one ``of`` shares one backward pass (``metric.backward()``
        then ``run[hook].grad`` is the nnsight-style spelling)."""
        from telelens.trace.backward import grad_of

        return grad_of(self.builder, of, wrt)

    def apply(self, run: RunProxy, hook: str, op: Any) -> None:
        """Apply a declarative op from :mod:`telelens.trace.ops` at ``hook`` of ``run``."""
        HookProxy(run, hook).apply(op)

    W_U = _WeightAttr()
    b_U = _WeightAttr()
    W_E = _WeightAttr()
    W_pos = _WeightAttr()
    W_E_pos = _WeightAttr()
    W_Q = _WeightAttr()
    W_K = _WeightAttr()
    W_V = _WeightAttr()
    W_O = _WeightAttr()
    b_Q = _WeightAttr()
    b_K = _WeightAttr()
    b_V = _WeightAttr()
    b_O = _WeightAttr()
    W_in = _WeightAttr()
    W_gate = _WeightAttr()
    W_out = _WeightAttr()
    b_in = _WeightAttr()
    b_out = _WeightAttr()
