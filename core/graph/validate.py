"""Validation: every check that can run before a forward pass, collecting every error.

Shapes and dtypes are inferred by evaluating each tensor op on ``device="meta"`` tensors
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
from telelens.core.graph.hooks import HookTable, hook_error, hook_shape, hook_table
from telelens.core.graph.indexing import BadIndex, check_index
from telelens.core.graph.structure import METRIC_NODES, OP_NODES, VALUE_NODES, kind, run_refs, value_refs
from telelens.core.graph.sweep import SweepGeometry, sweep_geometry
from telelens.core.graph.tensors import (
    INDEX_DTYPES,
    TORCH_DTYPES,
    constant_nbytes,
    decode_constant,
    meta_like,
)
from telelens.core.graph.weights import weight_error, weight_shape
from telelens.protos import ir

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

_TOKEN_DTYPES = (torch.int64, torch.int32)
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
    """Validate ``graph`` and keep what was learned (shapes, tokenized text, decoded constants)."""
    return _Checker(model, graph, limits).run()


class _Scope:
    """Node lookup for the main graph or a sweep's metric (whose refs may reach the main graph)."""

    def __init__(
        self, nodes: dict[int, ir.Node], meta: dict[int, torch.Tensor], constants: dict[int, torch.Tensor],
        parent: _Scope | None = None,
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


class _Checker:
    def __init__(self, model: HookedTransformer, graph: ir.Graph, limits: ir.Limits) -> None:
        self.model, self.graph, self.limits = model, graph, limits
        self.out = CheckedGraph(graph=graph)
        self.broken: set[int] = set()  # nodes with a structural error: no shape inference
        self.save_names: dict[str, int] = {}
        self.constant_bytes = 0

    def err(self, node_id: int | None, field: str, reason: str) -> None:
        self.out.errors.append(ir.GraphError(node_id, field, reason))

    # ------------------------------------------------------------------ driver
    def run(self) -> CheckedGraph:
        if not self._check_container():
            return self.out
        nodes = self.out.nodes
        self.out.table = hook_table(self.model)
        scope = _Scope(nodes, self.out.meta, self.out.constants)
        for nid in sorted(nodes):
            if not self._check_refs(nodes[nid], scope, outer_limit=None):
                self.broken.add(nid)
        for nid in sorted(nodes):
            node = nodes[nid]
            if nid in self.broken:
                continue
            try:
                self._infer(node, scope)
            except Exception as e:  # a bug in a check must not hide the graph's other errors
                self.err(nid, "", f"could not be checked: {short_reason(e)}")
        self.out.deps = analyze(nodes)
        self._check_order_and_cycles()
        self._check_totals()
        return self.out

    def _check_container(self) -> bool:
        g = self.graph
        if not isinstance(g, ir.Graph):
            self.err(None, "", f"expected an ir.Graph, got {type(g).__name__}")
            return False
        if g.version > ir.GRAPH_VERSION:
            self.err(
                None,
                "version",
                f"graph version {g.version} is newer than this executor's ({ir.GRAPH_VERSION})",
            )
        ok = True
        total = 0
        for n in g.nodes:
            if not isinstance(n, ir.NODE_TYPES) or not isinstance(n.id, int):
                self.err(getattr(n, "id", None), "", f"not a graph node: {type(n).__name__}")
                ok = False
                continue
            total += 1 + (len(n.metric) if isinstance(n, ir.Sweep) else 0)
            if n.id in self.out.nodes:
                self.err(n.id, "id", f"node id {n.id} is used twice")
                self.broken.add(n.id)
                continue
            self.out.nodes[n.id] = n
        if total > self.limits.max_nodes:
            self.err(None, "nodes", f"{total} nodes is more than the limit of {self.limits.max_nodes}")
        return ok

    def _check_refs(self, node: ir.Node, scope: _Scope, outer_limit: int | None) -> bool:
        """Refs point to earlier nodes of the right kind (False after reporting why not).

        ``outer_limit``: for a metric node, the id of its sweep (outer refs must come before it).
        """
        bad = False
        for fld, r in value_refs(node):
            target = scope.node(r)
            local = r in scope.nodes
            if target is None:
                self.err(node.id, fld, f"refers to node {r}, which does not exist")
            elif local and r >= node.id:
                self.err(node.id, fld, f"refers to node {r}; a node may only use nodes with smaller ids")
            elif not local and outer_limit is not None and r >= outer_limit:
                self.err(
                    node.id, fld, f"refers to node {r}, which comes after its sweep (node {outer_limit})"
                )
            elif not isinstance(target, VALUE_NODES) or (isinstance(target, ir.SweepLogits) and not local):
                self.err(node.id, fld, f"refers to node {r}, a {kind(target)}, which has no tensor value")
            else:
                continue
            bad = True
        for fld, r in run_refs(node):
            target = scope.node(r)
            if not isinstance(target, ir.Run):
                self.err(node.id, fld, f"must refer to a Run; node {r} is a {kind(target)}")
                bad = True
            elif r >= node.id:
                self.err(node.id, fld, f"refers to run {r}; a node may only use nodes with smaller ids")
                bad = True
        return not bad

    # ------------------------------------------------------------------ per node
    def _infer(self, node: ir.Node, scope: _Scope) -> None:
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
        elif isinstance(node, ir.Write):
            self._write(node, scope)
        elif isinstance(node, ir.CodeHook):
            self._activation(node, node.run, node.hook)
            if not self.limits.allow_code:
                self.err(
                    node.id, "payload", "code hooks are not allowed for this key (limits.allow_code is False)"
                )
            elif not isinstance(node.payload, (bytes, bytearray)):
                self.err(node.id, "payload", "the payload must be the bytes of a cloudpickled function")
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
        elif isinstance(node, ir.SweepLogits):
            self.err(node.id, "", "a SweepLogits placeholder belongs inside a sweep's metric sub-graph")

    def _meta_op(self, node: ir.Node, scope: _Scope, fn: Any) -> None:
        try:
            scope.meta[node.id] = fn()
        except Exception as e:  # torch's shape errors come in several types
            self.err(node.id, "", short_reason(e))

    def _constant(self, node: ir.Constant, scope: _Scope) -> None:
        self.constant_bytes += constant_nbytes(node.value)
        if self.constant_bytes > self.limits.max_constant_bytes:
            self.err(
                node.id, "value",
                f"constants total {self.constant_bytes} bytes, more than the limit of {self.limits.max_constant_bytes}",
            )  # fmt: skip
            return
        try:
            value = decode_constant(node.value)
        except ValueError as e:
            return self.err(node.id, "value", str(e))
        scope.constants[node.id] = value
        scope.meta[node.id] = meta_like(value)

    def _op(self, node: ir.Node, scope: _Scope) -> None:
        allowed = {ir.Binary: ir.BINARY_OPS, ir.Unary: ir.UNARY_OPS, ir.Reduce: ir.REDUCE_OPS}.get(type(node))
        op = getattr(node, "op", None)
        if allowed is not None and op not in allowed:
            return self.err(node.id, "op", f"unknown {kind(node)} op {op!r}; expected one of {list(allowed)}")
        if isinstance(node, ir.Binary):
            for fld in ("a", "b"):
                v = getattr(node, fld)
                if not isinstance(v, (ir.Ref, int, float)) or isinstance(v, bool):
                    return self.err(node.id, fld, f"an operand must be a node or a number, got {v!r}")
        if isinstance(node, ir.Gather):
            x, idx = scope.get_meta(node.input.node), scope.get_meta(node.index.node)
            assert x is not None and idx is not None
            if idx.dtype not in _TOKEN_DTYPES:
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
        if isinstance(node, ir.Reshape) and not all(isinstance(s, int) for s in node.shape):
            return self.err(node.id, "shape", f"shape must be ints, got {list(node.shape)}")

        def get(nid: int) -> torch.Tensor:
            m = scope.get_meta(nid)
            assert m is not None
            return m

        self._meta_op(node, scope, lambda: compute(node, get, "meta"))

    def _save(self, node: ir.Save, scope: _Scope) -> None:
        ok = True
        if not isinstance(node.name, str) or not node.name:
            self.err(node.id, "name", "a save needs a non-empty name")
            ok = False
        elif node.name in self.save_names:
            self.err(
                node.id, "name", f"duplicate save name {node.name!r} (also node {self.save_names[node.name]})"
            )
            ok = False
        else:
            self.save_names[node.name] = node.id
        if node.dtype is not None and node.dtype not in TORCH_DTYPES:
            self.err(node.id, "dtype", f"unknown dtype {node.dtype!r}; expected one of {list(ir.DTYPES)}")
            ok = False
        x = scope.get_meta(node.input.node)
        if ok and x is not None:
            dtype = TORCH_DTYPES[node.dtype] if node.dtype else x.dtype
            scope.meta[node.id] = torch.empty(x.shape, dtype=dtype, device="meta")

    # ------------------------------------------------------------------ runs and hooks
    def _run(self, node: ir.Run, scope: _Scope) -> None:
        if (node.tokens is None) == (not node.text):
            return self.err(node.id, "tokens", "a run needs exactly one of tokens and text")
        tokens_cpu = mask_cpu = None
        if node.tokens is not None:
            t = scope.get_meta(node.tokens.node)
            assert t is not None
            if t.dim() != 2 or t.dtype not in _TOKEN_DTYPES:
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
            return self.err(node.id, "text", "this model has no tokenizer: send token ids instead of text")
        texts = list(node.text)
        if not all(isinstance(t, str) for t in texts):
            return self.err(node.id, "text", "text must be a tuple of strings")
        kw: dict[str, Any] = dict(prepend_bos=node.prepend_bos, padding_side="right", move_to_device=False)
        try:
            tokens = self.model.to_tokens(texts, truncate=False, **kw)
            mask = None
            if len(texts) > 1:
                lengths = [int(self.model.to_tokens(t, truncate=False, **kw).shape[1]) for t in texts]
                if min(lengths) != tokens.shape[1]:  # padded: the model must not attend to the padding
                    mask = (torch.arange(tokens.shape[1])[None] < torch.tensor(lengths)[:, None]).long()
        except Exception as e:
            return self.err(node.id, "text", f"could not tokenize: {short_reason(e)}")
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

    def _write(self, node: ir.Write, scope: _Scope) -> None:
        act = self._activation(node, node.run, node.hook)
        if node.mode not in ir.WRITE_MODES:
            return self.err(
                node.id, "mode", f"unknown write mode {node.mode!r}; expected one of {list(ir.WRITE_MODES)}"
            )
        if not isinstance(node.value, (ir.Ref, int, float)) or isinstance(node.value, bool):
            return self.err(
                node.id, "value", f"a written value must be a node or a number, got {node.value!r}"
            )
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
        self, node_id: int, fld: str, shape: tuple[int, ...], items: tuple[ir.IndexItem, ...], scope: _Scope
    ) -> tuple[Any, ...] | None:
        """The index for meta tensors (None after reporting why ``items`` cannot index ``shape``)."""
        try:
            return check_index(shape, items, scope.get_meta, scope.constant, fld)
        except BadIndex as e:
            return self.err(node_id, e.field, e.reason)

    # ------------------------------------------------------------------ sweeps
    def _sweep(self, node: ir.Sweep, scope: _Scope) -> None:
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
        metric_scope = _Scope(
            {}, metric_meta, self.out.metric_constants.setdefault(node.id, {}), parent=scope
        )
        ok = self._check_metric(node, metric_scope)
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
        if not ok:
            return
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

    def _check_metric(self, node: ir.Sweep, metric_scope: _Scope) -> bool:
        ok = True
        for m in node.metric:
            if not isinstance(m, METRIC_NODES) or not isinstance(m.id, int):
                self.err(node.id, "metric", f"a {kind(m)} cannot be part of a sweep metric")
                ok = False
            elif m.id in metric_scope.nodes:
                self.err(m.id, "id", f"node id {m.id} is used twice in the metric of sweep {node.id}")
                ok = False
            else:
                metric_scope.nodes[m.id] = m
        placeholder = metric_scope.nodes.get(node.metric_input)
        if not isinstance(placeholder, ir.SweepLogits):
            self.err(
                node.id, "metric_input", f"must be a SweepLogits node of the metric, got {kind(placeholder)}"
            )
            ok = False
        extra = [
            m.id
            for m in metric_scope.nodes.values()
            if isinstance(m, ir.SweepLogits) and m.id != node.metric_input
        ]
        if extra:
            self.err(
                node.id,
                "metric",
                f"only the metric_input may be a SweepLogits placeholder, not nodes {extra}",
            )
            ok = False
        if node.metric_output not in metric_scope.nodes:
            self.err(node.id, "metric_output", f"node {node.metric_output} is not part of the metric")
            ok = False
        if ok:
            for nid in sorted(metric_scope.nodes):
                ok = self._check_refs(metric_scope.nodes[nid], metric_scope, outer_limit=node.id) and ok
        return ok

    # ------------------------------------------------------------------ graph-wide
    def _check_order_and_cycles(self) -> None:
        nodes, deps, table = self.out.nodes, self.out.deps, self.out.table
        assert table is not None
        for n in nodes.values():
            if n.id in self.broken:
                continue
            if isinstance(n, ir.Run):
                own = [r for r in deps.reads_of(value_refs(n)) if getattr(nodes[r], "run", None) == n.id]
                if own:
                    self.err(
                        n.id, "tokens", f"the run's inputs depend on its own activations (node {own[0]})"
                    )
            elif isinstance(n, ir.Write) and table.fires(n.hook):
                for r in sorted(deps.reads_of(value_refs(n))):
                    read = nodes[r]
                    assert isinstance(read, ir.Read)
                    if (
                        read.run == n.run
                        and table.fires(read.hook)
                        and table.order[read.hook] > table.order[n.hook]
                    ):
                        self.err(
                            n.id, "value",
                            f"depends on {read.hook} (node {r}), which run {n.run} computes after {n.hook}: "
                            "a write may only use earlier hooks of its own run",
                        )  # fmt: skip
                        break
        reported: set[int] = set()
        for unit, needs in deps.needs.items():
            for other, witness in needs.items():
                if other != unit and witness not in reported and deps.reaches(other, unit):
                    reported.add(witness)
                    self.err(
                        witness, "",
                        f"cross-run cycle: {kind(nodes[unit]).lower()} {unit} needs {kind(nodes[other]).lower()} "
                        f"{other}, which itself needs {unit}",
                    )  # fmt: skip

    def _check_totals(self) -> None:
        limits = self.limits
        tokens = sum(r.batch * r.pos for r in self.out.runs.values())
        if tokens > limits.max_tokens:
            self.err(
                None, "tokens", f"the runs total {tokens} tokens, more than the limit of {limits.max_tokens}"
            )
        result = 0
        for n in self.out.nodes.values():
            m = self.out.meta.get(n.id)
            if isinstance(n, ir.Save) and m is not None:
                result += m.numel() * m.element_size()
                if result > limits.max_result_bytes:
                    self.err(
                        n.id, "",
                        f"saved results would total {result} bytes, more than the limit of {limits.max_result_bytes}",
                    )  # fmt: skip
                    break
        cells = 0
        for sid, geometry in sorted(self.out.sweeps.items()):
            cells += geometry.n_cells
            if cells > limits.max_sweep_cells:
                self.err(
                    sid,
                    "axes",
                    f"sweeps total {cells} cells, more than the limit of {limits.max_sweep_cells}",
                )
                break
