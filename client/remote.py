"""RemoteModel: a HookedTransformer-shaped handle on a model served by a telelens server.

``telelens.connect("grpc://host:50051", model="smollm2-135m")`` returns one. It is a
:class:`~telelens.trace.backend.GraphBackend` (``execute`` sends a graph, results stream
back) and a :class:`~telelens.lens.surface.ModelSurface`: the weight views (``W_U``, ``W_O``,
``QK``, ...), ``accumulated_bias``, ``loss_fn``, token methods and ``generate`` are the local
model's own code, over this class's ``get_weight`` (fetched once, then cached) and ``execute``.
What stays here is what is remote: the connection, the weight fetch cache, text preparation.
``blocks[3].attn.W_O``, ``blocks[3].ln1(x)``, ``ln_final(x)``: views over ``get_weight`` (``lens.views``);
weight attributes are lazy (``client.lazy_weight``); ``add_hook`` hooks: ``client.remote_hooks``.

Importing this module imports neither gRPC nor ``telelens.core``: the transport is imported
by :func:`connect`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from telelens.client.lazy_weight import LazyWeight
from telelens.client.limits import DEFAULT, DEFAULT_MAX_RESULT_BYTES, Timeout
from telelens.client.remote_config import RemoteConfig
from telelens.client.remote_hooks import RemoteHookPoint, RemoteHooks
from telelens.client.tokenizer import RemoteTokenizer
from telelens.lens.norm import final_norm_kind
from telelens.lens.surface import ModelSurface
from telelens.lens.views import BlocksView, NormView
from telelens.protos import ir
from telelens.trace import builders
from telelens.trace.tracing import Tracer

if TYPE_CHECKING:
    from telelens.client.transport import RetryPolicy, Transport
    from telelens.lens.activation_cache import ActivationCache
    from telelens.lens.generation import StepFn
    from telelens.protos import service_pb2

__all__ = ["RemoteConfig", "RemoteHookPoint", "RemoteModel", "connect", "list_models", "model_info"]

ModelInput = str | Sequence[str] | torch.Tensor
_LAYER_WEIGHT = re.compile(r"^blocks\.(?P<layer>\d+)\.(attn|mlp)\.(?P<stacked>\w+)$")


# ---------------------------------------------------------------------------------------- model
class RemoteModel(RemoteHooks, ModelSurface):
    """A model on a telelens server, used like a local ``HookedTransformer``.

    Build with :func:`connect`. Everything that runs the model sends one intervention graph;
    only saved values come back (CPU tensors). ``transport`` is the connection
    (``transport.bytes_received``, ``transport.last_run`` for what moved). ``allow_code`` is the
    default of every call's ``allow_code`` (Python hook functions, registered or passed).
    """

    def __init__(
        self,
        transport: Transport,
        info: service_pb2.ModelInfo,
        handshake: service_pb2.HandshakeResponse | None = None,
        allow_code: bool = False,
        trust_tokenizer: bool = False,
    ) -> None:
        self.transport = transport
        self.allow_code = allow_code
        self.model_name: str = info.name
        self.info = info
        self.server_version = handshake.server_version if handshake is not None else None
        self.cfg = RemoteConfig(json.loads(info.config_json) if info.config_json else {})
        self.hook_names: list[str] = [h.name for h in info.hooks if h.name != ir.LOGITS]
        self._hook_shapes = {h.name: tuple(h.shape) for h in info.hooks if h.name != ir.LOGITS}
        from telelens.client.results import WIRE_DTYPES

        self.weight_shapes: dict[str, tuple[tuple[int, ...], str]] = {
            w.name: (tuple(w.shape), WIRE_DTYPES.get(w.dtype, "?")) for w in info.weights
        }
        """Weight name -> (shape, dtype) as the server lists them."""
        self.tokenizer = RemoteTokenizer.from_model_info(
            info.tokenizer_json, info.tokenizer_config_json, trust=trust_tokenizer
        )
        if self.tokenizer is not None and not hasattr(self.cfg, "default_padding_side"):
            setattr(self.cfg, "default_padding_side", self.tokenizer.padding_side)  # noqa: B010
        self._weights: dict[str, torch.Tensor] = {}
        self.blocks = BlocksView(self)
        """``blocks[l].attn.W_O``, ``blocks[l].mlp.W_out``, ``blocks[l].ln1(x)``: views over ``get_weight``."""
        final_kind = final_norm_kind(self.cfg)
        self.ln_final = None if final_kind is None else NormView(self, "ln_final", final_kind)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the connection (the model cannot run afterwards)."""
        self.transport.close()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RemoteModel {self.model_name!r} at {self.transport.target}: {self.cfg.n_layers} layers>"

    # ------------------------------------------------------------------ GraphBackend
    def execute(
        self,
        graph: ir.Graph,
        allow_code: bool = False,
        *,
        timeout: float | None = None,
        progress: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """Send ``graph`` to the server; every saved value by name.

        Code hooks need ``allow_code=True`` here, and a server and API key that allow code.
        Raises ``ir.GraphValidationError`` (naming each bad node) for a graph the server refuses.
        """
        if not (allow_code or self.allow_code):
            code = [n.id for n in graph.nodes if isinstance(n, ir.CodeHook)]
            if code:
                raise ir.GraphValidationError(
                    [ir.GraphError(i, "payload", "code hooks need allow_code=True") for i in code]
                )
        return self.transport.run(self.model_name, graph, timeout=timeout, progress=progress)

    def trace(self, allow_code: bool = False) -> Tracer:
        """A tracing context: record a graph, run it on the server on exit (see ``Tracer``)."""
        return Tracer(self, allow_code=allow_code)

    # ------------------------------------------------------------------ tokenization
    # to_tokens, to_str_tokens, to_single_token, ...: telelens.lens.tokens.TokenMethods, shared with the
    # local HookedTransformer, so both tokenize identically (tokens stay on the CPU here).

    def _prepare(
        self,
        input: ModelInput,
        prepend_bos: bool | None,
        padding_side: str | None,
        attention_mask: torch.Tensor | None,
    ) -> tuple[Any, torch.Tensor | None]:
        """Text is tokenized here (as the core's forward does: truncated to n_ctx, padded per side).

        The run then carries token ids, so local settings (``cfg.default_prepend_bos``,
        ``padding_side``) apply exactly as they would to a local model.
        """
        if isinstance(input, str) or (
            isinstance(input, (list, tuple)) and input and all(isinstance(s, str) for s in input)
        ):
            tokens, mask = self._encode(input, prepend_bos, padding_side)  # type: ignore[arg-type]
            if attention_mask is None and not bool(mask.all()):
                attention_mask = mask
            return tokens, attention_mask
        return input, attention_mask

    # ------------------------------------------------------------------ running
    def run_with_cache(
        self,
        input: ModelInput,
        names_filter: builders.NamesFilter = None,
        *,
        return_type: str | None = "logits",
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        attention_mask: torch.Tensor | None = None,
        pos_slice: Any = None,
        remove_batch_dim: bool = False,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        return_cache_object: bool = True,
        **kwargs: Any,
    ) -> tuple[torch.Tensor | None, ActivationCache | dict[str, torch.Tensor]]:
        """``logits, cache = model.run_with_cache(tokens, names_filter=...)``, computed on the server.

        The names filter is evaluated here against ``hook_names``; only the selected hooks
        (sliced by ``pos_slice``/``remove_batch_dim``, cast to ``dtype``) travel back.
        """
        tokens, mask = self._prepare(input, prepend_bos, padding_side, attention_mask)
        output, cache = builders.run_with_cache(
            self, tokens, names_filter, return_type=return_type, prepend_bos=prepend_bos,
            attention_mask=mask, pos_slice=pos_slice, remove_batch_dim=remove_batch_dim, dtype=dtype,
            device=device, **kwargs,
        )  # fmt: skip
        if not return_cache_object:
            return output, cache
        from telelens.lens.activation_cache import ActivationCache

        return output, ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)

    def run_with_hooks(
        self,
        input: ModelInput,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], Any]] = (),
        *,
        return_type: str | None = "logits",
        metric: Any = None,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        attention_mask: torch.Tensor | None = None,
        allow_code: bool = False,
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], Any]] = (),
        **kwargs: Any,
    ) -> torch.Tensor | None:
        """The output with ``fwd_hooks`` applied (after the registered hooks), each a declarative op
        from ``telelens.trace.ops``.

        Python functions run as code on the server: they need ``allow_code=True`` (or
        ``model.allow_code``) and a key that may send code. ``metric=ops.logit_diff(...)`` returns
        only the metric. Registered backward hooks act where gradients are computed
        (``run_with_cache(..., incl_bwd=True)``).
        """
        tokens, mask = self._prepare(input, prepend_bos, padding_side, attention_mask)
        return builders.run_with_hooks(
            self, tokens, fwd_hooks, return_type=return_type, metric=metric, prepend_bos=prepend_bos,
            attention_mask=mask, allow_code=allow_code, bwd_hooks=bwd_hooks, **kwargs,
        )  # fmt: skip

    def forward(
        self,
        input: ModelInput,
        return_type: str | None = "logits",
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Logits (or the loss, or None) of a forward pass on the server, with the registered hooks.

        As locally: ``stop_at_layer=L`` returns the residual stream entering block L instead;
        ``start_at_layer=L`` takes that residual [batch, pos, d_model] as ``input`` and runs
        blocks L.. (``tokens`` for ``return_type="loss"``); the server skips the earlier blocks.
        """
        return self.run_with_hooks(
            input, (), return_type=return_type, prepend_bos=prepend_bos, padding_side=padding_side,
            attention_mask=attention_mask, start_at_layer=start_at_layer, stop_at_layer=stop_at_layer,
            tokens=tokens,
        )  # fmt: skip

    __call__ = forward

    # ------------------------------------------------------------------ generation
    def _generation_step(self, use_past_kv_cache: bool) -> tuple[StepFn, str]:
        """One graph per step with the whole sequence so far (the server keeps no state between
        requests, so ``use_past_kv_cache`` is ignored); only the next token (greedy: the argmax is
        taken on the server) or the last position's logits (sampling, done here) come back."""

        def step(
            all_tokens: torch.Tensor,
            all_mask: torch.Tensor | None,
            new_tokens: torch.Tensor,
            new_mask: torch.Tensor | None,
            greedy: bool,
        ) -> torch.Tensor:
            graph, outputs = self._next_token_graph(all_tokens, all_mask, greedy)
            out = outputs(self.execute(graph, progress=False))[0]  # one bar (the loop's), not one per step
            assert out is not None
            return out

        return step, "cpu"

    def _next_token_graph(
        self, tokens: torch.Tensor, mask: torch.Tensor | None, greedy: bool
    ) -> tuple[ir.Graph, builders.OutputMap]:
        """One generation step (registered hooks applied): the last position's logits
        [batch, d_vocab_out], or their argmax."""
        from telelens.trace.graph import GraphBuilder
        from telelens.trace.proxies import make_run, save

        builder = GraphBuilder(self.hook_names, self.cfg, allow_code=self.allow_code)
        builder.run_hooks = self._registered_hooks("fwd")
        last = make_run(builder, tokens, attention_mask=mask).logits[:, -1]
        name = save(builder, last.argmax(-1) if greedy else last, "next").name
        return builder.graph(), builders.OutputMap(output=name)

    # ------------------------------------------------------------------ weights
    def get_weights(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Weights by name in one request (``W_U``, ``W_O`` stacked, ``blocks.3.attn.W_O``); cached,
        so each travels once, and a layer of a stacked weight already here is sliced from it."""
        missing = [n for n in dict.fromkeys(names) if self._cached(n) is None]
        if missing:
            nodes: list[ir.Node] = []
            for i, name in enumerate(missing):
                nodes += [ir.Weight(2 * i, name), ir.Save(2 * i + 1, ir.Ref(2 * i), f"w{i}")]
            result = self.execute(ir.Graph(tuple(nodes)))
            for i, name in enumerate(missing):
                self._weights[name] = result[f"w{i}"]
        return {n: self._cached(n) for n in names}  # type: ignore[misc]

    def _cached(self, name: str) -> torch.Tensor | None:
        if name in self._weights:
            return self._weights[name]
        layer_weight = _LAYER_WEIGHT.match(name)
        if layer_weight and layer_weight["stacked"] in self._weights:  # a layer of a stacked weight here
            return self._weights[layer_weight["stacked"]][int(layer_weight["layer"])]
        return None

    def get_weight(self, name: str) -> torch.Tensor:
        """One weight by name (fetched once, then cached)."""
        return self.get_weights([name])[name]

    def _weight_attr(self, name: str) -> torch.Tensor:
        """``model.W_E``, ``blocks[3].attn.W_O``: the cached weight, else a lazy tensor that fetches it
        on first use (``hasattr``, ``.shape``, ``.dtype`` transfer nothing)."""
        cached = self._cached(name)
        listed = self.weight_shapes.get(name)
        dtype = getattr(torch, listed[1], None) if listed is not None else None
        if cached is not None or listed is None or not isinstance(dtype, torch.dtype):
            return self.get_weight(name)  # here already, or unknown: get_weight says why
        return LazyWeight(self, name, listed[0], dtype)

    @property
    def n_params_total(self) -> int:
        """Every parameter of the served model (as the server counts them: ``HookedTransformer.n_params_total``)."""
        return int(self.cfg.n_params_total)

    def has_weight(self, name: str) -> bool:
        """Whether the server lists the weight ``name`` (see ``weight_shapes``)."""
        return name in self.weight_shapes

    def _unembed_directions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Only the requested columns of ``W_U`` travel (unless ``W_U`` is cached already)."""
        if "W_U" in self._weights:
            return self._weights["W_U"].T[tokens]
        with Tracer(self) as tr:
            cols = tr.W_U[:, tokens] if tokens.dim() else tr.W_U[:, int(tokens)]  # [d_model, *tokens.shape]
            saved = tr.save(cols, "directions")
        return saved.value.movedim(0, -1) if tokens.dim() else saved.value


# ---------------------------------------------------------------------------------------- connect
def _transport(
    url: str,
    api_key: str | None,
    timeout: Timeout,
    tls: Any,
    retry: RetryPolicy | None,
    **kwargs: Any,
) -> Transport:
    from telelens.client.transport import Transport  # gRPC is imported here, not with the package

    key = api_key if api_key is not None else os.environ.get("TELELENS_API_KEY") or None
    return Transport(url, api_key=key, tls=tls, timeout=timeout, retry=retry, **kwargs)


def connect(
    url: str,
    model: str | None = None,
    api_key: str | None = None,
    timeout: Timeout = DEFAULT,
    tls: Any = None,
    *,
    retry: RetryPolicy | None = None,
    chunk_bytes: int = 0,
    max_result_bytes: int | None = DEFAULT_MAX_RESULT_BYTES,
    progress: bool = True,
    options: Sequence[tuple[str, Any]] = (),
    allow_code: bool = False,
    trust_tokenizer: bool = False,
) -> RemoteModel:
    """Connect to a telelens server and open one of its models.

    ``url`` is ``grpc://host:port`` (``grpcs://`` for TLS); ``model`` may be omitted when the
    server serves exactly one. ``api_key`` defaults to ``$TELELENS_API_KEY``. ``timeout`` is
    the deadline of each call in seconds; by default (``limits.DEFAULT``) a run, its whole
    result stream included, gets 600 s (``limits.RUN_TIMEOUT``) and the small calls 30 s, so a
    stalled server cannot hang the client forever; ``timeout=None``, passed explicitly, lets runs
    go without deadline. ``max_result_bytes`` caps what one run may make this process allocate
    (default 16 GiB, ``limits.DEFAULT_MAX_RESULT_BYTES``; None: no cap): a server declaring more
    is refused with ``ProtocolError`` before anything is allocated. ``tls`` is True (system
    roots), a CA bundle path, PEM bytes or ``grpc.ChannelCredentials``. ``retry`` bounds the
    retries on UNAVAILABLE (``telelens.client.transport.RetryPolicy``). ``allow_code=True`` lets this
    model send Python hook functions (registered with ``add_hook`` or passed to a call) without
    ``allow_code=True`` on each call; the server and the key must allow code too. The server's
    tokenizer is refused (``ProtocolError``) if it uses a regex that is not a standard Hugging Face
    pattern (one could hang ``to_tokens``), unless ``trust_tokenizer=True``.

    The handshake runs first: an incompatible server raises ``IncompatibleServerError``
    naming both versions. Then the model's info (config, hooks, tokenizer) is fetched.
    """
    transport = _transport(
        url, api_key, timeout, tls, retry, chunk_bytes=chunk_bytes, max_result_bytes=max_result_bytes,
        progress=progress, options=options,
    )  # fmt: skip
    try:
        handshake = transport.handshake()
        if model is None:
            names = [m.name for m in transport.list_models()]
            if len(names) != 1:
                raise ValueError(
                    f"{url} serves {len(names)} models ({', '.join(names) or 'none'}): pass model=<name>"
                )
            model = names[0]
        info = transport.model_info(model)
        return RemoteModel(transport, info, handshake, allow_code=allow_code, trust_tokenizer=trust_tokenizer)
    except BaseException:  # the handshake, the model's info or its tokenizer refused: nothing to keep open
        transport.close()
        raise


def list_models(
    url: str, api_key: str | None = None, timeout: float | None = None, tls: Any = None
) -> list[service_pb2.ModelSummary]:
    """The models a server serves (after the version handshake)."""
    transport = _transport(url, api_key, timeout, tls, None)
    try:
        transport.handshake()
        return transport.list_models()
    finally:
        transport.close()


def model_info(
    url: str, model: str, api_key: str | None = None, timeout: float | None = None, tls: Any = None
) -> service_pb2.ModelInfo:
    """One model's info message (config JSON, hooks, tokenizer, weights)."""
    transport = _transport(url, api_key, timeout, tls, None)
    try:
        transport.handshake()
        return transport.model_info(model)
    finally:
        transport.close()
