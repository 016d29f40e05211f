"""TransformerLens-style calls as intervention graphs: ``run_with_cache`` and ``run_with_hooks``.

``build_*`` turn a call into ``(ir.Graph, OutputMap)``; an ``OutputMap`` maps the executor's saved
values back to what TransformerLens returns. ``run_with_cache(backend, ...)`` and
``run_with_hooks(backend, ...)`` do both around ``backend.execute``; a model class (local or
remote) wraps the cache dict in its ``ActivationCache``.

Names filters are evaluated here, against the model's hook list: only explicit hook names
travel, and a misspelt name fails before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from telelens.protos import ir
from telelens.trace.backend import GraphBackend, backend_allows_code, backend_run_hooks
from telelens.trace.backward import add_backward_hooks, add_cache_grads
from telelens.trace.graph import GraphBuilder, UnknownHookError, hook_suggestions
from telelens.trace.layer_range import LayerSpan
from telelens.trace.ops import HookOp, Metric
from telelens.trace.ops import python as python_op
from telelens.trace.proxies import RunProxy, ValueProxy, make_run, save, with_run_hooks

NamesFilter = str | Sequence[str] | Callable[[str], bool] | None
RunHooks = Sequence[tuple[str, HookOp]]
"""``(hook name, op)`` applied to every run first: a model's registered hooks (``add_hook``)."""
ModelInput = str | Sequence[str] | torch.Tensor
RETURN_TYPES = ("logits", "loss", None)


def resolve_names_filter(names_filter: NamesFilter, hook_names: Sequence[str]) -> list[str]:
    """The hook names a TransformerLens names filter selects, in forward order.

    ``None`` selects every hook; a str or list names hooks explicitly (unknown names raise
    ``UnknownHookError`` listing close matches); a callable is called on each hook name.
    """
    if names_filter is None:
        return list(hook_names)
    if callable(names_filter):
        return [n for n in hook_names if names_filter(n)]
    explicit = [names_filter] if isinstance(names_filter, str) else list(names_filter)
    if not all(isinstance(n, str) for n in explicit):
        raise TypeError("names_filter must be None, a hook name, a list of hook names, or a callable")
    known = set(hook_names)
    unknown = [n for n in explicit if n not in known]
    if unknown:
        lines = "; ".join(f"{n!r}{hook_suggestions(n, hook_names)}" for n in unknown)
        raise UnknownHookError(f"unknown hook point(s): {lines}")
    wanted = set(explicit)
    return [n for n in hook_names if n in wanted]


@dataclass(frozen=True)
class OutputMap:
    """How to read an execution result: which save is the model output, which the cache."""

    output: str | None = None
    """Save name of the output (logits, loss or a metric); None when nothing is returned."""
    cache: dict[str, str] = field(default_factory=dict)
    """Save name -> hook name, in forward order."""

    def __call__(
        self, result: Mapping[str, torch.Tensor], device: str | torch.device | None = None
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t if device is None else t.to(device)

        output = None if self.output is None else move(result[self.output])
        return output, {hook: move(result[name]) for name, hook in self.cache.items()}


def _start(
    input: ModelInput,
    hook_names: Sequence[str] | None,
    cfg: Any,
    allow_code: bool,
    prepend_bos: bool | None,
    attention_mask: torch.Tensor | None,
    return_type: str | None,
    to_tokens: Callable[..., torch.Tensor] | None,
    span: LayerSpan | None = None,
    tokens: torch.Tensor | None = None,
    run_hooks: RunHooks = (),
) -> tuple[GraphBuilder, RunProxy, torch.Tensor | None]:
    """A builder with one run (``run_hooks`` applied to it); for ``return_type="loss"`` also the
    token ids (loss needs them).

    With ``span.start`` set, ``input`` is the residual stream entering that block (``tokens``:
    the token ids, for the loss only); see :func:`_start_from_residual`.
    """
    if return_type not in RETURN_TYPES:
        raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}")
    builder = GraphBuilder(hook_names, cfg, allow_code=allow_code)
    builder.run_hooks = list(run_hooks)
    if span is not None and span.start is not None:
        return _start_from_residual(builder, input, span, attention_mask, return_type, tokens)
    tokens = None
    if return_type == "loss":
        if attention_mask is not None:
            raise ValueError("return_type='loss' with an attention_mask is not supported here")
        if isinstance(input, str):
            if to_tokens is None:
                raise ValueError(
                    "return_type='loss' needs token ids: pass tokens, or use a backend with to_tokens"
                )
            tokens = to_tokens(input) if prepend_bos is None else to_tokens(input, prepend_bos=prepend_bos)
        elif isinstance(input, (list, tuple)) and input and isinstance(input[0], str):
            raise ValueError(
                "return_type='loss' over a padded batch of texts is not supported: pass token ids"
            )
        else:
            tokens = torch.as_tensor(input)
            tokens = tokens[None] if tokens.dim() == 1 else tokens
        input = tokens
    run = make_run(builder, input, prepend_bos=prepend_bos, attention_mask=attention_mask)
    return builder, run, tokens


def _start_from_residual(
    builder: GraphBuilder,
    input: ModelInput,
    span: LayerSpan,
    attention_mask: torch.Tensor | None,
    return_type: str | None,
    tokens: torch.Tensor | None,
) -> tuple[GraphBuilder, RunProxy, torch.Tensor | None]:
    """``start_at_layer``: a run over placeholder token ids of the residual's [batch, pos] whose
    whole residual entering block ``start`` is set to ``input``. The executor recognises the
    pattern and starts its forward pass at that block (the blocks before it could not change
    anything: the write replaces their result)."""
    if not isinstance(input, torch.Tensor) or input.dim() != 3 or not input.is_floating_point():
        raise ValueError("with start_at_layer, input must be the residual stream [batch, pos, d_model]")
    if return_type == "loss":
        if tokens is None:
            raise ValueError("return_type='loss' needs tokens (pass tokens= when using start_at_layer)")
        if attention_mask is not None:
            raise ValueError("return_type='loss' with an attention_mask is not supported here")
        tokens = torch.as_tensor(tokens)
        tokens = tokens[None] if tokens.dim() == 1 else tokens
    batch_pos = tuple(input.shape[:2])
    if tokens is not None and tuple(tokens.shape) == batch_pos:
        placeholder = tokens  # one constant for the run and the loss
    else:
        placeholder = torch.zeros(batch_pos, dtype=torch.int32)
    registered, builder.run_hooks = builder.run_hooks, []
    run = make_run(builder, placeholder, attention_mask=attention_mask)
    run[span.entry_hook] = input
    builder.run_hooks = registered
    with_run_hooks(run)  # after the start value: a registered hook at the entry point sees it, as locally
    return builder, run, tokens


def _loss(run: RunProxy, tokens: torch.Tensor) -> ValueProxy:
    """Mean next-token cross-entropy, computed as the core's ``loss_fn`` does."""
    log_probs = run.logits[:, :-1].float().log_softmax(-1)  # [batch, pos - 1, d_vocab_out]
    nll = -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]  # [batch, pos - 1]
    return nll.mean()


def _output(
    builder: GraphBuilder,
    run: RunProxy,
    return_type: str | None,
    tokens: torch.Tensor | None,
    span: LayerSpan | None = None,
    input: ModelInput | None = None,
) -> str | None:
    if span is not None and span.stop is not None:  # the residual, whatever the return_type
        return save(builder, _residual_at(run, span, input), "resid").name
    if return_type == "logits":
        return save(builder, run.logits, "logits").name
    if return_type == "loss":
        assert tokens is not None
        return save(builder, _loss(run, tokens), "loss").name
    return None


def _residual_at(run: RunProxy, span: LayerSpan, input: ModelInput | None) -> Any:
    """The residual stream entering block ``span.stop`` (the value ``stop_at_layer`` returns).

    Read where the pass has just computed it, so the planner stops right there: the last run
    block's ``hook_resid_post``, or the embeddings' sum for ``stop_at_layer=0``.
    """
    assert span.stop is not None
    start = span.start or 0
    if span.start is not None and span.stop <= start:
        return input  # no block runs: the input comes back unchanged
    if span.stop == 0:
        embed = run["hook_embed"]
        names = run._builder.hook_names or ()
        return embed + run["hook_pos_embed"] if "hook_pos_embed" in names else embed
    return run[f"blocks.{span.stop - 1}.hook_resid_post"]


def _pos_index(hook: str, pos_slice: Any, remove_batch_dim: bool) -> tuple[Any, ...]:
    """TransformerLens ``pos_slice``: ints keep the dim; patterns/scores slice the query dim."""
    if isinstance(pos_slice, int):
        pos_slice = slice(pos_slice, pos_slice + 1 if pos_slice != -1 else None)
    elif not isinstance(pos_slice, slice):
        pos_slice = torch.as_tensor(pos_slice, dtype=torch.long)
    if hook.endswith(("hook_pattern", "hook_attn_scores")):
        return (..., pos_slice, slice(None))  # query_pos is dim -2
    return (slice(None),) * (0 if remove_batch_dim else 1) + (pos_slice,)


def build_run_with_cache_graph(
    input: ModelInput,
    names_filter: NamesFilter,
    hook_names: Sequence[str],
    *,
    return_type: str | None = "logits",
    return_logits: bool = True,
    prepend_bos: bool | None = None,
    attention_mask: torch.Tensor | None = None,
    pos_slice: Any = None,
    remove_batch_dim: bool = False,
    dtype: str | torch.dtype | None = None,
    cfg: Any = None,
    to_tokens: Callable[..., torch.Tensor] | None = None,
    incl_bwd: bool = False,
    bwd_hooks: Sequence[tuple[str | Callable[[str], bool], Any]] = (),
    allow_code: bool = False,
    start_at_layer: int | None = None,
    stop_at_layer: int | None = None,
    tokens: torch.Tensor | None = None,
    run_hooks: RunHooks = (),
) -> tuple[ir.Graph, OutputMap]:
    """One run, a Save per selected hook (named after the hook) and the output.

    ``return_type`` is the model output as in TransformerLens ("logits", "loss", None);
    ``return_logits=False`` is the same as ``return_type=None``. ``pos_slice`` and
    ``remove_batch_dim`` are applied before the Save, so only the slice travels; ``dtype``
    casts every cached activation on the executor. ``start_at_layer``/``stop_at_layer`` (and
    ``tokens`` for the loss) are the forward pass's: only hooks that fire in that span are cached.
    ``incl_bwd=True`` (the output must be the scalar loss) also caches ``<hook>_grad``, the loss's
    gradient at each cached hook, from one backward pass on the executor, with ``bwd_hooks``
    (backward hooks) acting on it.
    """
    if not return_logits:
        return_type = None
    if incl_bwd and return_type != "loss":
        raise ValueError(
            "incl_bwd=True differentiates the output, which must be a scalar: pass return_type='loss'"
        )
    span = LayerSpan(hook_names, start_at_layer, stop_at_layer)
    if incl_bwd and span.stop is not None:
        raise ValueError("incl_bwd=True differentiates the loss: it cannot be combined with stop_at_layer")
    builder, run, tokens = _start(
        input,
        hook_names,
        cfg,
        allow_code,
        prepend_bos,
        attention_mask,
        return_type,
        to_tokens,
        span,
        tokens,
        run_hooks,
    )
    add_backward_hooks(builder, run, bwd_hooks, lambda f: resolve_names_filter(f, hook_names))
    cache: dict[str, str] = {}
    reads: dict[str, int] = {}

    def shape(hook: str, value: ValueProxy) -> ValueProxy:
        if remove_batch_dim:
            value = value[0]
        if pos_slice is not None:
            value = value[_pos_index(hook, pos_slice, remove_batch_dim)]
        return value

    for hook in filter(span.fires, resolve_names_filter(names_filter, hook_names)):
        value = run[hook]
        reads[hook] = value.node_id
        cache[save(builder, shape(hook, value), hook, dtype).name] = hook
    if incl_bwd:
        assert tokens is not None
        loss = _loss(run, tokens)
        output: str | None = save(builder, loss, "loss").name
        for name, grad in add_cache_grads(builder, loss, reads, shape).items():
            cache[save(builder, grad, name, dtype).name] = name
    else:
        output = _output(builder, run, return_type, tokens, span, input)
    return builder.graph(), OutputMap(output, cache)


def _as_op(fn: Any, allow_code: bool) -> HookOp:
    if isinstance(fn, HookOp):
        return fn
    if callable(fn):
        if not allow_code:
            raise PermissionError(
                f"{getattr(fn, '__name__', fn)!r} is a Python hook function, which would run as code on "
                "the executor: use a declarative op from telelens.trace.ops (patch, zero_ablate, "
                "mean_ablate, ...), or pass allow_code=True where code is allowed"
            )
        return python_op(fn)
    raise TypeError(f"a hook must be an op from telelens.trace.ops or a function, got {type(fn).__name__}")


def build_run_with_hooks_graph(
    input: ModelInput,
    fwd_hooks: Sequence[tuple[str | Callable[[str], bool], Any]],
    hook_names: Sequence[str],
    *,
    return_type: str | None = "logits",
    metric: Metric | None = None,
    prepend_bos: bool | None = None,
    attention_mask: torch.Tensor | None = None,
    allow_code: bool = False,
    cfg: Any = None,
    to_tokens: Callable[..., torch.Tensor] | None = None,
    bwd_hooks: Sequence[tuple[str | Callable[[str], bool], Any]] = (),
    start_at_layer: int | None = None,
    stop_at_layer: int | None = None,
    tokens: torch.Tensor | None = None,
    run_hooks: RunHooks = (),
) -> tuple[ir.Graph, OutputMap]:
    """One run with each ``(name_or_filter, op)`` applied, returning the output or ``metric``.

    Ops at one hook apply in the order given (as TransformerLens runs hooks). With a
    ``metric`` (from :mod:`telelens.trace.ops`) only its value comes back, not the logits.
    ``bwd_hooks`` become backward-hook nodes: they act on gradients the graph asks for, and
    no gradient is asked for here (a backward hook cannot change the output).
    With ``start_at_layer``/``stop_at_layer`` hooks outside the span never fire (as locally).
    """
    span = LayerSpan(hook_names, start_at_layer, stop_at_layer)
    if metric is not None and span.stop is not None:
        raise ValueError("a metric reads the logits: it cannot be combined with stop_at_layer")
    builder, run, tokens = _start(
        input,
        hook_names,
        cfg,
        allow_code,
        prepend_bos,
        attention_mask,
        None if metric else return_type,
        to_tokens,
        span,
        tokens,
        run_hooks,
    )
    for target, fn in fwd_hooks:
        op = _as_op(fn, allow_code)
        if isinstance(target, str):
            builder.check_hook(target)  # a misspelt name fails even where it would not fire
            names = [target]
        else:
            names = resolve_names_filter(target, hook_names)
        for hook in filter(span.fires, names):
            op.to_nodes(builder, run, hook)
    add_backward_hooks(builder, run, bwd_hooks, lambda f: resolve_names_filter(f, hook_names))
    if metric is not None:
        if not isinstance(metric, Metric):
            raise TypeError("metric must be a metric from telelens.trace.ops (logit_diff, logit, log_prob)")
        output: str | None = save(builder, metric.to_nodes(builder, run), "metric").name
    else:
        output = _output(builder, run, return_type, tokens, span, input)
    return builder.graph(), OutputMap(output, {})


def _backend_parts(backend: GraphBackend) -> dict[str, Any]:
    return {
        "cfg": getattr(backend, "cfg", None),
        "to_tokens": getattr(backend, "to_tokens", None),
        "run_hooks": backend_run_hooks(backend),
    }


def run_with_cache(
    backend: GraphBackend,
    input: ModelInput,
    names_filter: NamesFilter = None,
    *,
    return_type: str | None = "logits",
    prepend_bos: bool | None = None,
    attention_mask: torch.Tensor | None = None,
    pos_slice: Any = None,
    remove_batch_dim: bool = False,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    incl_bwd: bool = False,
    bwd_hooks: Sequence[tuple[str | Callable[[str], bool], Any]] = (),
    allow_code: bool = False,
    start_at_layer: int | None = None,
    stop_at_layer: int | None = None,
    tokens: torch.Tensor | None = None,
    **ignored: Any,
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """``(output, {hook: activation})`` like ``HookedTransformer.run_with_cache`` (wrap the dict in
    an ActivationCache yourself). ``reset_hooks_end``/``clear_contexts`` are accepted and ignored:
    a graph leaves no hooks behind.

    ``incl_bwd=True`` (with ``return_type="loss"``) adds ``<hook>_grad`` entries as TransformerLens
    does: the executor runs the backward pass of the loss (the client could not call ``.backward()``
    on a remote result) and only the cached gradients travel back. ``bwd_hooks`` (declarative ops,
    or functions with ``allow_code=True``) act on those gradients during that backward pass."""
    _check_ignored(ignored, "run_with_cache")
    allow_code = allow_code or backend_allows_code(backend)  # registered code hooks run in every call
    graph, outputs = build_run_with_cache_graph(
        input, names_filter, backend.hook_names, return_type=return_type, prepend_bos=prepend_bos,
        attention_mask=attention_mask, pos_slice=pos_slice, remove_batch_dim=remove_batch_dim, dtype=dtype,
        incl_bwd=incl_bwd, bwd_hooks=[*backend_run_hooks(backend, "bwd"), *bwd_hooks], allow_code=allow_code,
        start_at_layer=start_at_layer, stop_at_layer=stop_at_layer, tokens=tokens, **_backend_parts(backend),
    )  # fmt: skip
    return outputs(backend.execute(graph, allow_code=allow_code), device=device)


def run_with_hooks(
    backend: GraphBackend,
    input: ModelInput,
    fwd_hooks: Sequence[tuple[str | Callable[[str], bool], Any]] = (),
    *,
    return_type: str | None = "logits",
    metric: Metric | None = None,
    prepend_bos: bool | None = None,
    attention_mask: torch.Tensor | None = None,
    allow_code: bool = False,
    bwd_hooks: Sequence[Any] = (),
    start_at_layer: int | None = None,
    stop_at_layer: int | None = None,
    tokens: torch.Tensor | None = None,
    **ignored: Any,
) -> torch.Tensor | None:
    """The output (logits, loss, the ``metric``, or None) with ``fwd_hooks`` applied, like
    ``HookedTransformer.run_with_hooks``; ``reset_hooks_end``/``clear_contexts`` are ignored.

    ``bwd_hooks`` are checked and compiled, but a backward hook cannot change the output and the
    client cannot call ``.backward()`` on a remote result: to see gradients, ask for them in the
    same call (``run_with_cache(..., incl_bwd=True, bwd_hooks=...)``, or ``.grad`` in a trace).
    A backend's registered backward hooks join ``bwd_hooks`` where gradients are computed
    (``run_with_cache(incl_bwd=True)``), not here."""
    _check_ignored(ignored, "run_with_hooks")
    allow_code = allow_code or backend_allows_code(backend)
    graph, outputs = build_run_with_hooks_graph(
        input, fwd_hooks, backend.hook_names, return_type=return_type, metric=metric, prepend_bos=prepend_bos,
        attention_mask=attention_mask, allow_code=allow_code, bwd_hooks=bwd_hooks,
        start_at_layer=start_at_layer, stop_at_layer=stop_at_layer, tokens=tokens, **_backend_parts(backend),
    )  # fmt: skip
    return outputs(backend.execute(graph, allow_code=allow_code))[0]


_IGNORED = ("reset_hooks_end", "clear_contexts", "return_cache_object")


def _check_ignored(kwargs: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(kwargs) - set(_IGNORED))
    if unknown:
        raise TypeError(f"{where}() got unsupported argument(s) {unknown}")
