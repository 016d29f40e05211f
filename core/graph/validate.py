"""Validation: every check that can run before a forward pass, collecting every error.

Structure (ids, references, node kinds, enum strings, constant bytes, node count) is
``telelens.protos.structure``'s one checker: run here first unless this very graph already
passed it (the codec ran it, or a worker decoded the front door's checked copy). What
follows needs the model: hook and weight names, shapes, dtypes, index and token ranges,
sweep geometry, write ordering, tokens and result sizes. Shapes and dtypes are inferred by evaluating each tensor op on ``device="meta"`` tensors
(the same :func:`~telelens.core.graph.evaluate.compute` the executor runs), with the real
hook shapes of each run. A node whose inputs already failed is skipped, so one mistake
gives one error, not a cascade.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from telelens.core.graph.deps import Dependencies, analyze
from telelens.core.graph.evaluate import compute, short_reason
from telelens.core.graph.gradients import grad_meta, gradient_errors
from telelens.core.graph.graph_checks import order_errors, total_errors
from telelens.core.graph.hooks import HookTable, hook_error, hook_shape, hook_table
from telelens.core.graph.indexing import BadIndex, check_index
from telelens.core.graph.refs import OP_NODES, value_refs
from telelens.core.graph.sweep import SweepGeometry, sweep_geometry
from telelens.core.graph.tensors import INDEX_DTYPES, TOKEN_DTYPES, TORCH_DTYPES, decode_constant, meta_like
from telelens.core.graph.weights import weight_error, weight_shape
from telelens.protos import ir
from telelens.protos.structure import check_structure, is_checked

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

DEFAULT_LIMITS = ir.Limits()


@dataclass
class RunShape:
    """A run's token batch as validation found it (text runs: tokenized here, once)."""

    batch: int
    pos: int
    tokens: torch.Tensor | None = None  # [batch, pos], text runs only (CPU)
    attention_mask: torch.Tensor | None = None  # [batch, pos], padded text runs only (CPU)


@dataclass
class CheckedGraph:
    """A graph with what validation learned about it; the planner and executor reuse all of it."""

    graph: ir.Graph
    nodes: dict[int, ir.Node] = field(default_factory=dict)
    table: HookTable | None = None
    runs: dict[int, RunShape] = field(default_factory=dict)
    constants: dict[int, torch.Tensor] = field(default_factory=dict)
    metric_constants: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict)
    meta: dict[int, torch.Tensor] = field(default_factory=dict)
    sweeps: dict[int, SweepGeometry] = field(default_factory=dict)
    deps: Dependencies = field(default_factory=Dependencies)
    errors: list[ir.GraphError] = field(default_factory=list)


def validate(
    model: HookedTransformer, graph: ir.Graph, limits: ir.Limits = DEFAULT_LIMITS
) -> list[ir.GraphError]:
    """Every reason ``graph`` cannot run on ``model`` under ``limits`` (empty: it can)."""
    return check(model, graph, limits).errors


def check(model: HookedTransformer, graph: ir.Graph, limits: ir.Limits = DEFAULT_LIMITS) -> CheckedGraph:
    """Validate ``graph`` and keep what was learned (shapes, tokenized text, decoded constants).

    A structurally bad graph gets the structural errors only: the model-aware checks assume
    well-formed references.
    """
    if not (isinstance(graph, ir.Graph) and is_checked(graph, limits)):
        errors = check_structure(graph, limits)
        if errors:
            return CheckedGraph(graph=graph, errors=errors)
    return _ModelChecker(model, graph, limits).run()


class _MetaScope:
    """Node lookup for the main graph or a sweep's metric (whose refs may reach the main graph)."""

    def __init__(
        self, nodes: dict[int, ir.Node], meta: dict[int, torch.Tensor], constants: dict[int, torch.Tensor],
        parent: _MetaScope | None = None,
    ) -> None:  # fmt: skip
        self.nodes, self.meta, self.constants, self.parent = nodes, meta, constants, parent

    def node(self, nid: int) -> ir.Node | None:
        if nid in self.nodes:
            return self.nodes[nid]
        return self.parent.node(nid) if self.parent else None

    def get_meta(self, nid: int) -> torch.Tensor | None:
        if nid in self.nodes:
            return self.meta.get(nid)
        return self.parent.get_meta(nid) if self.parent else None

    def constant(self, nid: int) -> torch.Tensor | None:
        """The value of a Constant (None for any other node): lets indices and token ids be checked."""
        if nid in self.nodes:
            return self.constants.get(nid) if isinstance(self.nodes[nid], ir.Constant) else None
        return self.parent.constant(nid) if self.parent else None


class _ModelChecker:
    """The model-aware checks of a structurally valid graph."""

    def __init__(self, model: HookedTransformer, graph: ir.Graph, limits: ir.Limits) -> None:
        self.model, self.graph, self.limits = model, graph, limits
        self.out = CheckedGraph(graph=graph, nodes={n.id: n for n in graph.nodes})

    def err(self, node_id: int | None, field: str, reason: str) -> None:
        self.out.errors.append(ir.GraphError(node_id, field, reason))

    # ------------------------------------------------------------------ driver
    def run(self) -> CheckedGraph:
        nodes = self.out.nodes
        self.out.table = hook_table(self.model)
        scope = _MetaScope(nodes, self.out.meta, self.out.constants)
        for nid in sorted(nodes):
            try:
                self._infer(nodes[nid], scope)
            except Exception as e:  # a bug in a check must not hide the graph's other errors
                self.err(nid, "", f"could not be checked: {short_reason(e)}")
        self.out.deps = analyze(nodes)
        self.out.errors += (
            order_errors(self.out) + gradient_errors(self.out) + total_errors(self.out, self.limits)
        )
        return self.out

    # ------------------------------------------------------------------ per node
    def _infer(self, node: ir.Node, scope: _MetaScope) -> None:
        """Check one node and record its meta value (if it has one)."""
        inputs = [scope.get_meta(r) for _, r in value_refs(node)]
        if any(m is None for m in inputs):
            return  # an input already failed and was reported
        if isinstance(node, ir.Constant):
            self._constant(node, scope)
        elif isinstance(node, ir.Weight):
            reason = weight_error(self.model, node.name)
            if reason:
                return self.err(node.id, "name", reason)
            shape, dtype = weight_shape(self.model, node.name)
            scope.meta[node.id] = torch.empty(shape, dtype=dtype, device="meta")
        elif isinstance(node, ir.Run):
            self._run(node, scope)
        elif isinstance(node, ir.Read):
            act = self._activation(node, node.run, node.hook)
            if act is not None:
                scope.meta[node.id] = act
        elif isinstance(node, (ir.Write, ir.GradWrite)):
            self._write(node, scope)  # type: ignore[arg-type]  # a GradWrite has a Write's fields
        elif isinstance(node, ir.Grad):
            meta = grad_meta(node, scope.get_meta)
            if isinstance(meta, tuple):
                return self.err(node.id, *meta)
            scope.meta[node.id] = meta
        elif isinstance(node, (ir.CodeHook, ir.GradCodeHook)):
            self._activation(node, node.run, node.hook)
            if not self.limits.allow_code:
                self.err(
                    node.id, "payload", "code hooks are not allowed for this key (limits.allow_code is False)"
                )
        elif isinstance(node, ir.Index):
            x = scope.get_meta(node.input.node)
            assert x is not None
            index = self._index(node.id, "index", tuple(x.shape), node.index, scope)
            if index is not None:
                self._meta_op(node, scope, lambda: x[index])
        elif isinstance(node, OP_NODES):
            self._op(node, scope)
        elif isinstance(node, ir.Save):
            self._save(node, scope)
        elif isinstance(node, ir.Sweep):
            self._sweep(node, scope)

    def _meta_op(self, node: ir.Node, scope: _MetaScope, fn: Any) -> None:
        try:
            scope.meta[node.id] = fn()
        except Exception as e:  # torch's shape errors come in several types
            self.err(node.id, "", short_reason(e))

    def _constant(self, node: ir.Constant, scope: _MetaScope) -> None:
        try:
            value = decode_constant(node.value)
        except ValueError as e:
            return self.err(node.id, "value", str(e))
        scope.constants[node.id] = value
        scope.meta[node.id] = meta_like(value)

    def _op(self, node: ir.Node, scope: _MetaScope) -> None:
        if isinstance(node, ir.Gather):
            x, idx = scope.get_meta(node.input.node), scope.get_meta(node.index.node)
            assert x is not None and idx is not None
            if idx.dtype not in TOKEN_DTYPES:
                return self.err(node.id, "index", f"gather needs an int64 index tensor, got {idx.dtype}")
            values = scope.constant(node.index.node)
            if values is not None and values.numel() and -x.dim() <= node.dim < x.dim():
                size = x.shape[node.dim]
                lo, hi = int(values.min()), int(values.max())
                if lo < 0 or hi >= size:
                    bad = lo if lo < 0 else hi
                    return self.err(
                        node.id, "index", f"index {bad} is out of range for dim {node.dim} of size {size}"
                    )

        def get(nid: int) -> torch.Tensor:
            m = scope.get_meta(nid)
            assert m is not None
            return m

        self._meta_op(node, scope, lambda: compute(node, get, "meta"))

    def _save(self, node: ir.Save, scope: _MetaScope) -> None:
        x = scope.get_meta(node.input.node)
        if x is not None:
            dtype = TORCH_DTYPES[node.dtype] if node.dtype else x.dtype
            scope.meta[node.id] = torch.empty(x.shape, dtype=dtype, device="meta")

    # ------------------------------------------------------------------ runs and hooks
    def _run(self, node: ir.Run, scope: _MetaScope) -> None:
        tokens_cpu = mask_cpu = None
        if node.tokens is not None:
            t = scope.get_meta(node.tokens.node)
            assert t is not None
            if t.dim() != 2 or t.dtype not in TOKEN_DTYPES:
                return self.err(
                    node.id,
                    "tokens",
                    f"tokens must be int ids [batch, pos], got {t.dtype} of shape {list(t.shape)}",
                )
            batch, pos = int(t.shape[0]), int(t.shape[1])
            values = scope.constant(node.tokens.node)
            if values is not None and values.numel():
                lo, hi, vocab = int(values.min()), int(values.max()), self.model.cfg.d_vocab
                if lo < 0 or hi >= vocab:
                    bad = lo if lo < 0 else hi
                    self.err(node.id, "tokens", f"token id {bad} is out of range for a vocabulary of {vocab}")
        else:
            tokenized = self._tokenize(node)
            if tokenized is None:
                return
            tokens_cpu, mask_cpu = tokenized
            batch, pos = int(tokens_cpu.shape[0]), int(tokens_cpu.shape[1])
        fld = "tokens" if node.tokens is not None else "text"
        if batch < 1 or pos < 1:
            return self.err(node.id, fld, f"a run needs at least one token, got shape [{batch}, {pos}]")
        if pos > self.model.cfg.n_ctx:
            return self.err(
                node.id,
                fld,
                f"{pos} positions exceed the model's context length n_ctx={self.model.cfg.n_ctx}",
            )
        if batch * pos > self.limits.max_tokens:
            return self.err(
                node.id, fld, f"{batch * pos} tokens is more than the limit of {self.limits.max_tokens}"
            )
        if node.attention_mask is not None:
            m = scope.get_meta(node.attention_mask.node)
            assert m is not None
            if tuple(m.shape) != (batch, pos) or m.dtype not in INDEX_DTYPES:
                return self.err(
                    node.id, "attention_mask",
                    f"the mask must be int or bool [batch, pos] = [{batch}, {pos}], got {m.dtype} {list(m.shape)}",
                )  # fmt: skip
        self.out.runs[node.id] = RunShape(batch, pos, tokens_cpu, mask_cpu)

    def _tokenize(self, node: ir.Run) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        if self.model.tokenizer is None:
            self.err(node.id, "text", "this model has no tokenizer: send token ids instead of text")
            return None
        texts = list(node.text)
        kw: dict[str, Any] = dict(prepend_bos=node.prepend_bos, padding_side="right", move_to_device=False)
        try:
            tokens = self.model.to_tokens(texts, truncate=False, **kw)
            mask = None
            if len(texts) > 1:
                lengths = [int(self.model.to_tokens(t, truncate=False, **kw).shape[1]) for t in texts]
                if min(lengths) != tokens.shape[1]:  # padded: the model must not attend to the padding
                    mask = (torch.arange(tokens.shape[1])[None] < torch.tensor(lengths)[:, None]).long()
        except Exception as e:
            self.err(node.id, "text", f"could not tokenize: {short_reason(e)}")
            return None
        return tokens, mask

    def _activation(self, node: ir.Node, run: int, hook: str) -> torch.Tensor | None:
        """Meta activation of ``hook`` in ``run`` (None after reporting why there is none)."""
        assert self.out.table is not None
        reason = hook_error(self.model, self.out.table, hook)
        if reason:
            self.err(node.id, "hook", reason)
            return None
        shape = self.out.runs.get(run)
        if shape is None:
            return None  # the run itself failed validation
        dims = hook_shape(self.model, hook, shape.batch, shape.pos)
        return torch.empty(dims, dtype=self.out.table.dtypes[hook], device="meta")

    def _write(self, node: ir.Write, scope: _MetaScope) -> None:
        act = self._activation(node, node.run, node.hook)
        if act is None:
            return
        index = self._index(node.id, "index", tuple(act.shape), node.index, scope)
        if index is None:
            return
        try:
            region = act[index]
        except Exception as e:
            return self.err(
                node.id, "index", f"{short_reason(e)} (indexing {node.hook} of shape {list(act.shape)})"
            )
        if isinstance(node.value, ir.Ref):
            value = scope.get_meta(node.value.node)
            assert value is not None
            try:
                fits = torch.broadcast_shapes(value.shape, region.shape) == region.shape
            except RuntimeError:
                fits = False
            if not fits:
                self.err(
                    node.id, "value",
                    f"a value of shape {list(value.shape)} does not fit the indexed region {list(region.shape)} "
                    f"of {node.hook} {list(act.shape)}",
                )  # fmt: skip

    def _index(
        self,
        node_id: int,
        fld: str,
        shape: tuple[int, ...],
        items: tuple[ir.IndexItem, ...],
        scope: _MetaScope,
    ) -> tuple[Any, ...] | None:
        """The index for meta tensors (None after reporting why ``items`` cannot index ``shape``)."""
        try:
            return check_index(shape, items, scope.get_meta, scope.constant, fld)
        except BadIndex as e:
            self.err(node_id, e.field, e.reason)
            return None

    # ------------------------------------------------------------------ sweeps
    def _sweep(self, node: ir.Sweep, scope: _MetaScope) -> None:
        runs = self.out.runs
        hooked = [
            n.id for n in self.out.nodes.values()
            if isinstance(n, (ir.Write, ir.CodeHook)) and n.run == node.corrupted
        ]  # fmt: skip
        if hooked:
            self.err(
                node.id, "corrupted",
                f"the corrupted run has writes or code hooks (nodes {hooked}); a sweep patches a plain run",
            )  # fmt: skip
        metric_meta: dict[int, torch.Tensor] = {}
        metric_scope = _MetaScope(
            {m.id: m for m in node.metric}, metric_meta, self.out.metric_constants.setdefault(node.id, {}),
            parent=scope,
        )  # fmt: skip
        if node.clean not in runs or node.corrupted not in runs or hooked:
            return
        clean, corr = runs[node.clean], runs[node.corrupted]
        if (clean.batch, clean.pos) != (corr.batch, corr.pos):
            return self.err(
                node.id, "clean",
                f"clean tokens [{clean.batch}, {clean.pos}] and corrupted tokens [{corr.batch}, {corr.pos}] differ in shape",
            )  # fmt: skip
        assert self.out.table is not None
        geometry = sweep_geometry(self.model, self.out.table, node, corr.pos)
        if isinstance(geometry, tuple):
            return self.err(node.id, *geometry)
        # Shape inference of the metric, with the placeholder as the corrupted run's logits.
        logits = torch.empty(
            hook_shape(self.model, ir.LOGITS, corr.batch, corr.pos), dtype=self.out.table.dtypes[ir.LOGITS],
            device="meta",
        )  # fmt: skip
        for nid in sorted(metric_scope.nodes):
            m = metric_scope.nodes[nid]
            if isinstance(m, ir.SweepLogits):
                metric_meta[nid] = logits
            else:
                self._infer(m, metric_scope)
        out = metric_meta.get(node.metric_output)
        if out is None:
            return  # already reported
        if out.numel() != 1:
            return self.err(
                node.metric_output, "", f"a sweep metric must be a scalar, got shape {list(out.shape)}"
            )
        self.out.sweeps[node.id] = geometry
        scope.meta[node.id] = torch.empty(geometry.sizes, dtype=torch.float32, device="meta")
