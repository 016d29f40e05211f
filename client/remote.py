"""RemoteModel: a HookedTransformer-shaped handle on a model served by a telelens server.

``telelens.connect("grpc://host:50051", model="smollm2-135m")`` returns one. It is a
:class:`~telelens.trace.backend.GraphBackend` (``execute`` sends a graph, results stream
back) and offers the HookedTransformer surface that makes sense at a distance:
``cfg``, ``hook_names``, ``tokenizer`` and ``to_tokens``/``to_str_tokens``/... (tokenized here,
exactly as the core does), ``run_with_cache`` (an ``ActivationCache``), ``run_with_hooks``
with declarative ops, ``trace()``, ``generate`` and lazily fetched weights (``W_U``,
``W_O``, ``blocks[3].attn.W_O``, ...).

Importing this module imports neither gRPC nor ``telelens.core``: the transport is imported
by :func:`connect`, the core's ``ActivationCache`` and sampling code when first used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from telelens.client.tokenizer import RemoteTokenizer
from telelens.lens.tokens import TokenMethods
from telelens.protos import ir
from telelens.trace import builders
from telelens.trace.tracing import Tracer

if TYPE_CHECKING:
    from telelens.client.transport import RetryPolicy, Transport
    from telelens.lens.activation_cache import ActivationCache
    from telelens.lens.factored_matrix import FactoredMatrix
    from telelens.protos import service_pb2

ModelInput = str | Sequence[str] | torch.Tensor

ATTN_WEIGHTS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
MLP_WEIGHTS = ("W_in", "W_gate", "W_out", "b_in", "b_out")


# ---------------------------------------------------------------------------------------- config
class RemoteConfig:
    """The server model's ``HookedTransformerConfig`` as attributes (from its JSON).

    ``dtype`` is a torch dtype, as in the core; ``device`` is "cpu", where results arrive
    (the server's device is ``server_device``).
    """

    def __init__(self, values: dict[str, Any]) -> None:
        values = dict(values)
        dtype = values.get("dtype", "float32")
        if isinstance(dtype, str):
            values["dtype"] = getattr(torch, dtype.removeprefix("torch."), dtype)
        values["server_device"] = values.get("device")
        values["device"] = "cpu"
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:  # only for names that are not set
        raise AttributeError(f"the server model's config has no field {name!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["dtype"] = str(d["dtype"]).removeprefix("torch.")
        return d

    @property
    def n_params(self) -> int:
        """Parameters in the blocks (embeddings excluded), counted as the core counts them."""
        kv = int(getattr(self, "n_key_value_heads", None) or self.n_heads)
        attn = self.d_model * self.d_head * (2 * self.n_heads + 2 * kv)
        d_mlp = int(getattr(self, "d_mlp", None) or 0)
        mlp = 0 if getattr(self, "attn_only", False) else (3 if getattr(self, "gated_mlp", False) else 2)
        return self.n_layers * (attn + mlp * self.d_model * d_mlp)

    def __repr__(self) -> str:
        keys = ("model_name", "n_layers", "d_model", "n_heads", "d_head", "d_vocab", "dtype")
        return "RemoteConfig(" + ", ".join(f"{k}={getattr(self, k, None)!r}" for k in keys) + ", ...)"


class RemoteHookPoint:
    """A hook point of the server model: its name and dimension names (nothing to attach to)."""

    def __init__(self, name: str, shape: tuple[str, ...]) -> None:
        self.name = name
        self.shape = shape

    def __repr__(self) -> str:
        return f"<RemoteHookPoint {self.name} [{', '.join(self.shape)}]>"


# ---------------------------------------------------------------------------------------- weights
class _PartView:
    """``model.blocks[l].attn`` / ``.mlp``: per-layer weights, fetched on first use."""

    def __init__(self, model: RemoteModel, layer: int, part: str, names: tuple[str, ...]) -> None:
        self._model, self._layer, self._part, self._names = model, layer, part, names

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self._names:
            raise AttributeError(
                f"remote blocks[{self._layer}].{self._part} has weights {', '.join(self._names)}; "
                f"no {name!r} (modules and hooks do not exist on this side)"
            )
        return self._model._layer_weight(self._layer, self._part, name)

    def __dir__(self) -> list[str]:
        return list(self._names)


class _BlockView:
    """``model.blocks[l]``: ``.attn`` and ``.mlp`` weight views."""

    def __init__(self, model: RemoteModel, layer: int) -> None:
        self.layer = layer
        self.attn = _PartView(model, layer, "attn", ATTN_WEIGHTS)
        if not getattr(model.cfg, "attn_only", False):
            self.mlp = _PartView(model, layer, "mlp", MLP_WEIGHTS)

    def __repr__(self) -> str:
        return f"<remote block {self.layer}>"


class _Blocks(Sequence[_BlockView]):
    def __init__(self, model: RemoteModel) -> None:
        self._views = [_BlockView(model, layer) for layer in range(model.cfg.n_layers)]

    def __len__(self) -> int:
        return len(self._views)

    def __getitem__(self, i: Any) -> Any:
        return self._views[i]


class _RemoteNorm:
    """``model.ln_final`` on the client: the server's norm with its weights (``ln_final.w`` and
    ``ln_final.b``, fetched on first use), for ``apply_ln`` at the final layer (the logit lens),
    computed by the core's own :func:`~telelens.lens.norm.normalize`."""

    def __init__(self, model: RemoteModel) -> None:
        self.model = model
        self.kind: str = model.cfg.normalization_type
        self.eps: float = float(getattr(model.cfg, "eps", 1e-5))

    def _weights(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        names = [n for n in ("ln_final.w", "ln_final.b") if n in self.model.weight_shapes]
        got = self.model.fetch_weights(names) if names else {}
        return got.get("ln_final.w"), got.get("ln_final.b")

    def parameters(self) -> Any:
        return iter(w for w in self._weights() if w is not None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from telelens.lens.norm import normalize

        return normalize(x, self.kind, *self._weights(), self.eps)


# ---------------------------------------------------------------------------------------- model
class RemoteModel(TokenMethods):
    """A model on a telelens server, used like a local ``HookedTransformer``.

    Build with :func:`connect`. Everything that runs the model sends one intervention graph;
    only saved values come back (CPU tensors). ``transport`` is the connection
    (``transport.bytes_received``, ``transport.last_run`` for what moved).
    """

    def __init__(
        self,
        transport: Transport,
        info: service_pb2.ModelInfo,
        handshake: service_pb2.HandshakeResponse | None = None,
    ) -> None:
        self.transport = transport
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
        self.tokenizer = RemoteTokenizer.from_model_info(info.tokenizer_json, info.tokenizer_config_json)
        if self.tokenizer is not None and not hasattr(self.cfg, "default_padding_side"):
            setattr(self.cfg, "default_padding_side", self.tokenizer.padding_side)  # noqa: B010
        self._weights: dict[str, torch.Tensor] = {}
        self.blocks = _Blocks(self)
        self.ln_final = None if getattr(self.cfg, "normalization_type", None) is None else _RemoteNorm(self)

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
        if not allow_code:
            code = [n.id for n in graph.nodes if isinstance(n, ir.CodeHook)]
            if code:
                raise ir.GraphValidationError(
                    [ir.GraphError(i, "payload", "code hooks need allow_code=True") for i in code]
                )
        return self.transport.run(self.model_name, graph, timeout=timeout, progress=progress)

    def trace(self, allow_code: bool = False) -> Tracer:
        """A tracing context: record a graph, run it on the server on exit (see ``Tracer``)."""
        return Tracer(self, allow_code=allow_code)

    # ------------------------------------------------------------------ hooks
    @property
    def hook_dict(self) -> dict[str, RemoteHookPoint]:
        """Hook points in forward order (names and dimension names; nothing to attach locally)."""
        return {n: RemoteHookPoint(n, self._hook_shapes[n]) for n in self.hook_names}

    def hook_shapes(self) -> dict[str, tuple[str, ...]]:
        """Every hook name with its dimension names, e.g. ("batch", "pos", "d_model")."""
        return dict(self._hook_shapes)

    def all_head_labels(self) -> list[str]:
        return [f"L{layer}H{head}" for layer in range(self.cfg.n_layers) for head in range(self.cfg.n_heads)]

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
        **kwargs: Any,
    ) -> torch.Tensor | None:
        """The output with ``fwd_hooks`` applied, each a declarative op from ``telelens.trace.ops``.

        Python functions run as code on the server: they need ``allow_code=True`` and a key
        that may send code. ``metric=ops.logit_diff(...)`` returns only the metric.
        """
        tokens, mask = self._prepare(input, prepend_bos, padding_side, attention_mask)
        return builders.run_with_hooks(
            self, tokens, fwd_hooks, return_type=return_type, metric=metric, prepend_bos=prepend_bos,
            attention_mask=mask, allow_code=allow_code, **kwargs,
        )  # fmt: skip

    def forward(
        self,
        input: ModelInput,
        return_type: str | None = "logits",
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Logits (or the loss, or None) of a forward pass on the server."""
        return self.run_with_hooks(
            input, (), return_type=return_type, prepend_bos=prepend_bos, padding_side=padding_side,
            attention_mask=attention_mask,
        )  # fmt: skip

    __call__ = forward

    def loss_fn(self, logits: torch.Tensor, tokens: torch.Tensor, per_token: bool = False) -> torch.Tensor:
        """Next-token cross-entropy of logits you already have (computed here, like the core)."""
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -log_probs.gather(-1, tokens[:, 1:, None].to(logits.device))[..., 0]
        return nll if per_token else nll.mean()

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        input: ModelInput = "",
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: int | list[int] | None = None,
        do_sample: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        return_type: Literal["input", "str", "tokens"] = "input",
        verbose: bool = True,
        seed: int | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> Any:
        """TransformerLens's ``generate``, as a loop of runs on the server.

        Each step sends the whole sequence so far (the server keeps no state between
        requests, so ``use_past_kv_cache`` is accepted and ignored) and brings back only the
        next token (greedy: the argmax is taken on the server) or the last position's logits
        (sampling, done here). The loop is the core's (``telelens.lens.generation``).
        """
        from telelens.lens.generation import generation_loop

        def step(
            all_tokens: torch.Tensor,
            all_mask: torch.Tensor | None,
            new_tokens: torch.Tensor,
            new_mask: torch.Tensor | None,
            greedy: bool,
        ) -> torch.Tensor:
            graph, decode = self._next_token_graph(all_tokens, all_mask, greedy)
            out = decode(self.execute(graph, progress=False))[0]  # one bar (the loop's), not one per step
            assert out is not None
            return out

        return generation_loop(
            self, input, step, "cpu", max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos,
            eos_token_id=eos_token_id, do_sample=do_sample, top_k=top_k, top_p=top_p, temperature=temperature,
            freq_penalty=freq_penalty, prepend_bos=prepend_bos, padding_side=padding_side,
            return_type=return_type, verbose=verbose, seed=seed, attention_mask=attention_mask,
        )  # fmt: skip

    @staticmethod
    def _next_token_graph(
        tokens: torch.Tensor, mask: torch.Tensor | None, greedy: bool
    ) -> tuple[ir.Graph, builders.Decode]:
        """One generation step: the last position's logits [batch, d_vocab_out], or their argmax."""
        from telelens.trace.graph import GraphBuilder
        from telelens.trace.proxies import make_run, save

        builder = GraphBuilder()
        last = make_run(builder, tokens, attention_mask=mask).logits[:, -1]
        name = save(builder, last.argmax(-1) if greedy else last, "next").name
        return builder.graph(), builders.Decode(output=name)

    # ------------------------------------------------------------------ weights
    def fetch_weights(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Fetch weights by name in one request (``W_U``, ``W_O`` stacked, ``blocks.3.attn.W_O``);
        cached, so each travels once."""
        missing = [n for n in dict.fromkeys(names) if n not in self._weights]
        if missing:
            nodes: list[ir.Node] = []
            for i, name in enumerate(missing):
                nodes += [ir.Weight(2 * i, name), ir.Save(2 * i + 1, ir.Ref(2 * i), f"w{i}")]
            result = self.execute(ir.Graph(tuple(nodes)))
            for i, name in enumerate(missing):
                self._weights[name] = result[f"w{i}"]
        return {n: self._weights[n] for n in names}

    def get_weight(self, name: str) -> torch.Tensor:
        """One weight by name (fetched once, then cached)."""
        return self.fetch_weights([name])[name]

    def _layer_weight(self, layer: int, part: str, name: str) -> torch.Tensor | None:
        if name == "W_gate" and not getattr(self.cfg, "gated_mlp", False):
            return None
        if name in self._weights:  # the stacked weight is here already: slice it
            return self._weights[name][layer]
        return self.get_weight(f"blocks.{layer}.{part}.{name}")

    def _stacked(self, name: str) -> torch.Tensor:
        if name in MLP_WEIGHTS and getattr(self.cfg, "attn_only", False):
            raise AttributeError("an attention-only model has no MLP weights")
        return self.get_weight(name)

    @property
    def W_U(self) -> torch.Tensor:
        """[d_model, d_vocab_out]"""
        return self.get_weight("W_U")

    @property
    def b_U(self) -> torch.Tensor:
        return self.get_weight("b_U")

    @property
    def W_E(self) -> torch.Tensor:
        """[d_vocab, d_model]"""
        return self.get_weight("W_E")

    @property
    def W_pos(self) -> torch.Tensor:
        """[n_ctx, d_model] (learned positions only)."""
        if getattr(self.cfg, "positional_embedding_type", "standard") != "standard":
            raise AttributeError("this model uses rotary positions: it has no W_pos")
        return self.get_weight("W_pos")

    @property
    def W_E_pos(self) -> torch.Tensor:
        """W_E and W_pos concatenated: [d_vocab + n_ctx, d_model]."""
        return torch.cat([self.W_E, self.W_pos], dim=0)

    @property
    def W_Q(self) -> torch.Tensor:
        """[n_layers, n_heads, d_model, d_head]"""
        return self._stacked("W_Q")

    @property
    def W_K(self) -> torch.Tensor:
        return self._stacked("W_K")

    @property
    def W_V(self) -> torch.Tensor:
        return self._stacked("W_V")

    @property
    def W_O(self) -> torch.Tensor:
        """[n_layers, n_heads, d_head, d_model]"""
        return self._stacked("W_O")

    @property
    def b_Q(self) -> torch.Tensor:
        return self._stacked("b_Q")

    @property
    def b_K(self) -> torch.Tensor:
        return self._stacked("b_K")

    @property
    def b_V(self) -> torch.Tensor:
        return self._stacked("b_V")

    @property
    def b_O(self) -> torch.Tensor:
        return self._stacked("b_O")

    @property
    def W_in(self) -> torch.Tensor:
        """[n_layers, d_model, d_mlp]"""
        return self._stacked("W_in")

    @property
    def W_gate(self) -> torch.Tensor | None:
        return self._stacked("W_gate") if getattr(self.cfg, "gated_mlp", False) else None

    @property
    def W_out(self) -> torch.Tensor:
        """[n_layers, d_mlp, d_model]"""
        return self._stacked("W_out")

    @property
    def b_in(self) -> torch.Tensor:
        return self._stacked("b_in")

    @property
    def b_out(self) -> torch.Tensor:
        return self._stacked("b_out")

    @property
    def QK(self) -> FactoredMatrix:
        """[n_layers, n_heads, d_model, d_model] as a FactoredMatrix (core's, imported on use)."""
        from telelens.lens.factored_matrix import FactoredMatrix

        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        from telelens.lens.factored_matrix import FactoredMatrix

        return FactoredMatrix(self.W_V, self.W_O)

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> torch.Tensor:
        """Sum of the output biases of every component before ``layer`` (its MLP too if ``mlp_input``)."""
        attn_only = getattr(self.cfg, "attn_only", False)
        names = ["b_O"] if attn_only or not include_mlp_biases else ["b_O", "b_out"]
        w = self.fetch_weights(names)
        total = torch.zeros(self.cfg.d_model, dtype=w["b_O"].dtype)
        for i in range(layer):  # summed in the core's order, so the numbers match exactly
            total = total + w["b_O"][i]
            if include_mlp_biases and not attn_only:
                total = total + w["b_out"][i]
        if mlp_input:
            if layer >= self.cfg.n_layers:
                raise ValueError("mlp_input needs a layer below n_layers")
            total = total + w["b_O"][layer]
        return total

    def tokens_to_residual_directions(self, tokens: str | int | torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Unembedding directions of tokens: [d_model] for one, [..., d_model] for many.

        Only the requested columns of ``W_U`` travel (unless ``W_U`` is cached already).
        """
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        t = torch.as_tensor(tokens, dtype=torch.long)
        if "W_U" in self._weights:
            return self._weights["W_U"].T[t]
        with Tracer(self) as tr:
            cols = tr.W_U[:, t] if t.dim() else tr.W_U[:, int(t)]  # [d_model, *t.shape]
            saved = tr.save(cols, "directions")
        return saved.value.movedim(0, -1) if t.dim() else saved.value


# ---------------------------------------------------------------------------------------- connect
def _transport(
    url: str,
    api_key: str | None,
    timeout: float | None,
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
    timeout: float | None = None,
    tls: Any = None,
    *,
    retry: RetryPolicy | None = None,
    chunk_bytes: int = 0,
    max_result_bytes: int | None = None,
    progress: bool = True,
    options: Sequence[tuple[str, Any]] = (),
) -> RemoteModel:
    """Connect to a telelens server and open one of its models.

    ``url`` is ``grpc://host:port`` (``grpcs://`` for TLS); ``model`` may be omitted when the
    server serves exactly one. ``api_key`` defaults to ``$TELELENS_API_KEY``. ``timeout`` is
    the deadline of each call in seconds (None: no deadline for runs). ``tls`` is True (system
    roots), a CA bundle path, PEM bytes or ``grpc.ChannelCredentials``. ``retry`` bounds the
    retries on UNAVAILABLE (``telelens.client.transport.RetryPolicy``).

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
    except BaseException:
        transport.close()
        raise
    return RemoteModel(transport, info, handshake)


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
