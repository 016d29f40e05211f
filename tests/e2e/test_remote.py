"""Remote mode end to end: a real server (real Ray) on loopback, the thin client, a tiny GPT-2.

The server (``telelens.server.app.run_server``) serves a random GPT-2-like model saved with
``save_pretrained`` together with a small byte-level BPE tokenizer; the same folder is loaded
locally. Remote results must equal local-mode results exactly (``LocalBackend``: the same
executor on the same weights) and, where the core's own hooks compute the same thing, the
local ``HookedTransformer`` too. No mocks: every failure mode is provoked for real.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from server_helpers import load_tiny_local

import telelens
import telelens.client.transport as transport_mod
from telelens.client import (
    AuthenticationError,
    GraphBackend,
    IncompatibleServerError,
    ModelNotFoundError,
    ProtocolError,
    RemoteModel,
    RemoteTimeoutError,
    ServerUnavailableError,
    builders,
    ops,
)
from telelens.client.results import Chunk, ResultAssembler, parse_run_response
from telelens.client.transport import RetryPolicy, Transport, parse_target
from telelens.protos import ir, service_pb2, tensor_pb2

CORPUS = [
    "The Eiffel Tower is in the city of Paris.",
    "The Colosseum is in the city of Rome.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "Hello world! Tabs\tand  double spaces, naïve café.",
] * 5
KEY, OTHER_KEY = "tl-test-key", "tl-other-key"
PROMPTS = ["The Eiffel Tower is in the city of", "The Colosseum is in", "Mary and John"]
RES, Z, PAT, POST = (
    "blocks.1.hook_resid_pre",
    "blocks.0.attn.hook_z",
    "blocks.0.attn.hook_pattern",
    "blocks.0.mlp.hook_post",
)


# ---------------------------------------------------------------------------------------- fixtures
def _save_tiny_model(folder: Path) -> None:
    """A random GPT-2 (vocab 320) and a byte-level BPE tokenizer with its own pad token."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<pad>"
    ).save_pretrained(folder)
    config = transformers.GPT2Config(
        vocab_size=320, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # random (not unit) norms and biases, so every parameter shows in the numbers
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
    model.save_pretrained(folder)


def _keys_file(path: Path) -> Path:
    from telelens.server._private.auth import hash_key

    keys = [
        {"name": "tester", "key_sha256": hash_key(KEY), "models": "*", "allow_code": True},
        {"name": "other", "key_sha256": hash_key(OTHER_KEY), "models": ["some-other-model"]},
    ]
    path.write_text(json.dumps({"keys": keys}))
    return path


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("remote") / "tiny"
    _save_tiny_model(folder)
    return folder


@pytest.fixture(scope="module")
def server(ray_cluster: None, tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from telelens.server.app import run_server
    from telelens.server.config import ServeConfig

    base = tmp_path_factory.mktemp("server")
    config = ServeConfig.for_model(
        str(tiny_folder), name="tiny", port=0, data_dir=str(base / "data"),
        keys_file=str(_keys_file(base / "keys.json")), allow_code=True,
        progress_interval_seconds=0.0,  # progress for every pass, however short the run
        process_weights=False,  # compared with the local from_pretrained_no_processing model
    )  # fmt: skip
    with run_server(config) as handle:
        yield handle


@pytest.fixture(scope="module")
def url(server: Any) -> str:
    return f"grpc://127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def remote(url: str) -> Iterator[RemoteModel]:
    model = telelens.connect(url, model="tiny", api_key=KEY, progress=False)
    yield model
    model.close()


@pytest.fixture(scope="module")
def local(tiny_folder: Path) -> Any:
    return load_tiny_local(tiny_folder)


@pytest.fixture(scope="module")
def backend(local: Any) -> Any:
    from telelens.core.graph.local import LocalBackend

    return LocalBackend(local)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------- connect
def test_connect_describes_the_model(remote, local, backend, url, tiny_folder):
    import transformers

    assert isinstance(remote, GraphBackend)
    assert remote.hook_names == backend.hook_names
    for field in ("n_layers", "d_model", "n_heads", "d_head", "d_vocab", "n_ctx", "d_mlp", "act_fn"):
        assert getattr(remote.cfg, field) == getattr(local.cfg, field), field
    assert remote.cfg.dtype == torch.float32 and remote.cfg.device == "cpu"
    assert remote.cfg.n_params == local.cfg.n_params
    # TransformerLens's n_params_total: every parameter, as Hugging Face's num_parameters() counts them
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_folder))
    assert remote.n_params_total == local.n_params_total == hf.num_parameters()
    shapes = local.hook_shapes()
    assert all(dims == shapes[name] for name, dims in remote.hook_shapes().items())
    assert remote.hook_dict[PAT].shape == ("batch", "head_index", "query_pos", "key_pos")
    assert remote.weight_shapes["W_U"] == ((32, 320), "float32")
    assert remote.server_version == telelens.__version__
    # one model served: model= may be left out
    with telelens.connect(url, api_key=KEY, progress=False) as again:
        assert again.model_name == "tiny"
    assert [m.name for m in telelens.client.list_models(url, api_key=KEY)] == ["tiny"]


def test_errors_for_models_and_keys(url):
    with pytest.raises(
        ModelNotFoundError, match=r"model 'nope' is not served for this key; your key may use: tiny"
    ):
        telelens.connect(url, model="nope", api_key=KEY)
    with pytest.raises(AuthenticationError, match="API key is required"):
        telelens.connect(url, model="tiny", api_key="")
    with pytest.raises(AuthenticationError, match="unknown API key"):
        telelens.connect(url, model="tiny", api_key="tl-wrong")
    # a model the key may not use answers like an unknown one
    with pytest.raises(ModelNotFoundError, match="model 'tiny' is not served for this key"):
        telelens.connect(url, model="tiny", api_key=OTHER_KEY)


def test_incompatible_handshake(url, monkeypatch):
    monkeypatch.setattr(transport_mod, "PROTOCOL_VERSION", 0)
    with pytest.raises(IncompatibleServerError) as info:
        telelens.connect(url, model="tiny", api_key=KEY)
    message = str(info.value)
    assert "client protocol 0" in message and f"server protocol {ir.GRAPH_VERSION}" in message
    assert f"telelens {telelens.__version__}" in message and "upgrade the client" in message
    monkeypatch.setattr(transport_mod, "PROTOCOL_VERSION", ir.GRAPH_VERSION)
    monkeypatch.setattr(transport_mod, "MIN_SERVER_PROTOCOL_VERSION", ir.GRAPH_VERSION + 1)
    with pytest.raises(IncompatibleServerError, match=f"needs server protocol >= {ir.GRAPH_VERSION + 1}"):
        telelens.connect(url, model="tiny", api_key=KEY)


# ---------------------------------------------------------------------------------------- tokens
TEXTS = [
    "The Eiffel Tower is in the city of",
    " leading space and  double  spaces",
    "naïve café — 東京 🚀\n\ttabs",
    "<|endoftext|>special<pad>",
    "",
]


def test_tokenization_equals_local(remote, local):
    assert remote.tokenizer.pad_token_id == local.tokenizer.pad_token_id != remote.tokenizer.eos_token_id
    assert remote.tokenizer.bos_token_id == local.tokenizer.bos_token_id
    for text in TEXTS:
        for prepend_bos in (None, True, False):
            assert torch.equal(remote.to_tokens(text, prepend_bos), local.to_tokens(text, prepend_bos))
            assert remote.to_str_tokens(text, prepend_bos) == local.to_str_tokens(text, prepend_bos)
        tokens = local.to_tokens(text)
        assert remote.to_string(tokens) == local.to_string(tokens)
        assert remote.to_string(tokens[0]) == local.to_string(tokens[0])
    for side in ("left", "right"):
        for prepend_bos in (True, False):
            got = remote.to_tokens(TEXTS, prepend_bos=prepend_bos, padding_side=side)
            assert torch.equal(got, local.to_tokens(TEXTS, prepend_bos=prepend_bos, padding_side=side))
            assert torch.equal(
                remote._encode(TEXTS, prepend_bos, side)[1], local._encode(TEXTS, prepend_bos, side)[1]
            )
    assert remote.to_str_tokens(TEXTS) == local.to_str_tokens(TEXTS)
    long = " ".join(CORPUS)  # longer than n_ctx: truncated the same way
    assert torch.equal(remote.to_tokens(long), local.to_tokens(long))
    assert remote.to_tokens(long, truncate=False).shape == local.to_tokens(long, truncate=False).shape
    single = local.to_str_tokens("The Eiffel", prepend_bos=False)[1]
    assert remote.to_single_token(single) == local.to_single_token(single)
    assert remote.to_single_str_token(5) == local.to_single_str_token(5)
    assert remote.get_token_position(
        single, "The Eiffel The Eiffel", mode="last"
    ) == local.get_token_position(single, "The Eiffel The Eiffel", mode="last")
    with pytest.raises(ValueError, match="not one"):
        remote.to_single_token("The Eiffel Tower")


# ---------------------------------------------------------------------------------------- run_with_cache
def test_run_with_cache_equals_local(remote, local, backend):
    tokens = local.to_tokens(PROMPTS)  # padded batch: tokens + attention mask below
    for names in (RES, [RES, PAT], lambda n: n.endswith("hook_z"), None):
        logits, cache = remote.run_with_cache(PROMPTS, names_filter=names)
        ref_logits, ref_cache = builders.run_with_cache(
            backend, tokens, names, attention_mask=local._encode(PROMPTS, None, None)[1]
        )
        core_logits, core_cache = local.run_with_cache(PROMPTS, names_filter=names)
        assert torch.equal(logits, ref_logits) and torch.equal(logits, core_logits)
        assert list(cache.keys()) == list(ref_cache) == list(core_cache.keys())
        for k in cache:
            assert torch.equal(cache[k], ref_cache[k]), k
            assert torch.allclose(cache[k], core_cache[k], atol=1e-6), k  # fused vs explicit attention
    # slicing and casting happen on the server: only the slice travels
    _, sliced = remote.run_with_cache(
        PROMPTS[0], names_filter=[RES, PAT], pos_slice=-1, remove_batch_dim=True
    )
    _, ref = local.run_with_cache(PROMPTS[0], names_filter=[RES, PAT], pos_slice=-1, remove_batch_dim=True)
    for k in (RES, PAT):
        assert sliced[k].shape == ref[k].shape and torch.allclose(sliced[k], ref[k], atol=1e-6)
    out, half = remote.run_with_cache(PROMPTS[0], names_filter=RES, dtype="float16", return_type=None)
    assert out is None and half[RES].dtype == torch.float16
    loss, _ = remote.run_with_cache(PROMPTS[0], names_filter=RES, return_type="loss")
    assert torch.equal(loss, local(PROMPTS[0], return_type="loss"))
    _, as_dict = remote.run_with_cache(PROMPTS[0], names_filter=RES, return_cache_object=False)
    assert type(as_dict) is dict and list(as_dict) == [RES]


def test_activation_cache_methods_equal_local(remote, local):
    text = PROMPTS[0]
    _, cache = remote.run_with_cache(text)
    _, ref = local.run_with_cache(text)
    for k in cache:
        assert torch.equal(cache[k], ref[k]), k
    assert torch.equal(cache["pattern", 1], ref["pattern", 1])
    assert torch.equal(cache.accumulated_resid(incl_mid=True), ref.accumulated_resid(incl_mid=True))
    assert torch.equal(cache.decompose_resid(1), ref.decompose_resid(1))
    assert torch.equal(cache.stack_head_results(1), ref.stack_head_results(1))  # uses blocks[l].attn.W_O
    full, labels = cache.get_full_resid_decomposition(return_labels=True)  # W_O, W_out, accumulated_bias
    ref_full, ref_labels = ref.get_full_resid_decomposition(return_labels=True)
    assert labels == ref_labels and torch.equal(full, ref_full)
    stack = cache.accumulated_resid()
    paris = local.to_tokens(text)[0, -1]
    assert torch.equal(cache.logit_attrs(stack, paris), ref.logit_attrs(stack, paris))  # W_U columns only
    assert torch.equal(cache.apply_ln_to_stack(stack, -1), ref.apply_ln_to_stack(stack, -1))
    # The logit lens: ln_final re-applied on the client with the server's norm weights.
    lens = cache.accumulated_resid(apply_ln=True)
    assert torch.allclose(lens, ref.accumulated_resid(apply_ln=True), atol=1e-6)
    logits = lens[-1] @ remote.W_U + remote.b_U  # the last component is the final residual
    assert torch.allclose(logits, local(text)[0], atol=1e-4)


def test_weights_equal_local(remote, local):
    for name in (
        "W_U",
        "W_E",
        "W_pos",
        "b_U",
        "W_Q",
        "W_K",
        "W_V",
        "W_O",
        "b_O",
        "W_in",
        "W_out",
        "b_in",
        "b_out",
    ):
        assert torch.equal(getattr(remote, name), getattr(local, name).detach()), name
    assert torch.equal(remote.W_E_pos, local.W_E_pos.detach())
    assert remote.W_gate is None
    assert torch.equal(remote.blocks[1].attn.W_V, local.blocks[1].attn.W_V.detach())
    fresh = telelens.connect(remote.transport.target, model="tiny", api_key=KEY, progress=False)
    with fresh:  # nothing cached: per-layer weights and single columns travel alone
        assert torch.equal(fresh.blocks[1].mlp.W_out, local.blocks[1].mlp.W_out.detach())
        assert "W_out" not in fresh._weights
        ids = torch.tensor([[3, 4], [5, 6]])
        assert torch.equal(fresh.tokens_to_residual_directions(ids), local.tokens_to_residual_directions(ids))
        assert torch.equal(fresh.tokens_to_residual_directions(7), local.tokens_to_residual_directions(7))
        assert fresh.transport.bytes_received == (128 * 32 + 2 * 2 * 32 + 32) * 4  # W_out[1], 5 columns
        for layer in (0, 1, 2):
            assert torch.equal(fresh.accumulated_bias(layer), local.accumulated_bias(layer))
        assert torch.equal(
            fresh.accumulated_bias(1, mlp_input=True), local.accumulated_bias(1, mlp_input=True)
        )
    x = torch.randn(2, 5, 32)
    with torch.no_grad():  # the blocks' norms, computed here with the server's ln1/ln2 weights
        assert torch.equal(remote.blocks[1].ln1(x), local.blocks[1].ln1(x))
        assert torch.equal(remote.blocks[1].ln2(x), local.blocks[1].ln2(x))
        assert torch.equal(remote.ln_final(x), local.ln_final(x))
    with pytest.raises(AttributeError, match="no 'hook_z'"):
        remote.blocks[0].attn.hook_z  # noqa: B018


# ---------------------------------------------------------------------------------------- run_with_hooks
VEC = torch.linspace(-1, 1, 32)
OPS = [
    (Z, ops.zero_ablate(head=2)),
    (PAT, ops.zero_ablate(head=1, pos=slice(2, 5))),
    (Z, ops.mean_ablate(head=1, pos=-1)),
    (RES, ops.resample_ablate(seed=0)),
    (Z, ops.patch(torch.randn(3, 9, 4, 8, generator=torch.Generator().manual_seed(0)), head=2, pos=[1, 2])),
    (RES, ops.add(VEC, scale=3.0, pos=-1)),
    (POST, ops.scale(0.5, pos=[0, 1])),
    (RES, ops.clamp(max=0.0, pos=0)),
]


@pytest.mark.parametrize("hook, op", OPS, ids=[f"{h.split('.')[-1]}-{type(op).__name__}" for h, op in OPS])
@torch.no_grad()
def test_run_with_hooks_each_op_equals_local(remote, local, backend, hook, op):
    tokens = local.to_tokens(PROMPTS)
    mask = local._encode(PROMPTS, None, None)[1]
    got = remote.run_with_hooks(tokens, fwd_hooks=[(hook, op)], attention_mask=mask)
    assert torch.equal(got, builders.run_with_hooks(backend, tokens, [(hook, op)], attention_mask=mask))
    assert torch.equal(got, local.run_with_hooks(tokens, fwd_hooks=[(hook, op)], attention_mask=mask))
    assert not torch.equal(got, local(tokens, attention_mask=mask))


@torch.no_grad()
def test_run_with_hooks_metrics_loss_and_code(remote, local, backend):
    tokens = local.to_tokens(PROMPTS[:2], padding_side="left")
    metric = ops.logit_diff(3, 4)
    op = ops.mean_ablate(head=1)
    expected = metric(local.run_with_hooks(tokens, fwd_hooks=[(Z, op)]))
    assert torch.equal(remote.run_with_hooks(tokens, [(Z, op)], metric=metric), expected)
    loss = remote.run_with_hooks(tokens, [(Z, op)], return_type="loss")
    assert torch.equal(loss, local.run_with_hooks(tokens, fwd_hooks=[(Z, op)], return_type="loss"))
    assert torch.equal(remote(PROMPTS, padding_side="left"), local(PROMPTS, padding_side="left"))
    # a Python hook is code: refused on the client unless allowed, then run by the server
    double = ops.python(lambda act, hook: act * 2)
    with pytest.raises(PermissionError, match="allow_code"):
        remote.run_with_hooks(tokens, [(RES, double)])
    got = remote.run_with_hooks(tokens, [(RES, double)], allow_code=True)
    assert torch.equal(got, builders.run_with_hooks(backend, tokens, [(RES, double)], allow_code=True))


# ---------------------------------------------------------------------------------------- trace
def test_trace_patching_equals_local(remote, local):
    paris, rome = 5, 7

    def experiment(model: Any) -> dict[str, torch.Tensor]:
        with model.trace() as t:
            clean = t.run("The Eiffel Tower is in the city of")
            corrupt = t.run("The Colosseum is in the city of")
            corrupt["blocks.0.hook_resid_post"][:, -1] = clean["blocks.0.hook_resid_post"][:, -1]
            corrupt["blocks.1.attn.hook_z"][:, :, 2] = 0.0
            diff = t.save(corrupt.logits[0, -1, paris] - corrupt.logits[0, -1, rome], "diff")
            t.save(corrupt.logits.log_softmax(-1)[0, -1].max(), "best")
            t.save(t.W_U[:, paris] @ t.W_O[1][2, 3], "w")
            t.save(clean["blocks.1.hook_resid_post"], "resid", dtype="bfloat16")
        assert diff.value.shape == ()
        return t.result

    got, ref = experiment(remote), experiment(local)
    assert set(got) == set(ref) == {"diff", "best", "w", "resid"}
    for k in got:
        assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]), k


def test_invalid_graph_raises_graph_validation_error(remote):
    nodes = (
        ir.Run(0, text=("hi",)),
        ir.Read(1, 0, "blocks.7.hook_resid_post"),
        ir.Weight(2, "W_nope"),
        ir.Save(3, ir.Ref(1), "x"),
        ir.Save(4, ir.Ref(2), "w"),
    )
    with pytest.raises(ir.GraphValidationError) as info:
        remote.execute(ir.Graph(nodes))
    by_node = {e.node_id: e for e in info.value.errors}
    assert {1, 2} <= set(by_node)
    assert "blocks.7.hook_resid_post" in by_node[1].reason and "W_nope" in by_node[2].reason
    assert "node 1" in str(info.value)
    with pytest.raises(ir.GraphValidationError, match="allow_code"):
        remote.execute(ir.Graph((ir.Run(0, text=("hi",)), ir.CodeHook(1, 0, RES, b"x"))))


# ---------------------------------------------------------------------------------------- generate
def test_generate_equals_local(remote, local):
    for prompt in ("The Eiffel Tower", ["The Colosseum is in", "Mary"]):
        greedy = remote.generate(prompt, max_new_tokens=6, do_sample=False, verbose=False)
        assert greedy == local.generate(prompt, max_new_tokens=6, do_sample=False, verbose=False)
        kw = dict(max_new_tokens=5, top_k=20, top_p=0.9, temperature=0.8, seed=3, verbose=False)
        sampled = remote.generate(prompt, return_type="tokens", **kw)
        assert torch.equal(
            sampled, local.generate(prompt, return_type="tokens", use_past_kv_cache=False, **kw)
        )
    tokens = local.to_tokens("Mary and")
    assert torch.equal(
        remote.generate(tokens, max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=False),
        local.generate(tokens, max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=False),
    )


# ---------------------------------------------------------------------------------------- transport
def test_bytes_received_match_the_result(remote):
    names = [PAT]
    before, wire_before = remote.transport.bytes_received, remote.transport.wire_bytes_received
    _, cache = remote.run_with_cache(PROMPTS * 4, names_filter=names, return_type=None)
    size = cache[PAT].numel() * cache[PAT].element_size()
    got = remote.transport.bytes_received - before
    wire = remote.transport.wire_bytes_received - wire_before
    assert got == size and size <= wire <= 1.05 * size, (size, got, wire)
    stats = remote.transport.last_run
    assert stats.result_bytes == size and stats.results == 1 and stats.compute_seconds >= 0
    assert stats.worker.startswith("tiny/") and stats.progress


def test_small_chunks_and_progress_bars(url, remote, capsys):
    with telelens.connect(url, model="tiny", api_key=KEY, chunk_bytes=4096) as model:
        model.transport.transfer_threshold, model.transport.progress_delay = 1000, 0.0
        _, cache = model.run_with_cache(PROMPTS * 8, names_filter=[PAT, RES], return_type=None)
        assert model.transport.last_run.chunks > 2  # several chunks per result, reassembled
        _, ref = remote.run_with_cache(PROMPTS * 8, names_filter=[PAT, RES], return_type=None)
        assert all(torch.equal(cache[k], ref[k]) for k in (PAT, RES))
    err = capsys.readouterr().err
    assert "results" in err and "forward" in err  # the download bar and the server's progress


def test_deadline_exceeded(url):
    with telelens.connect(url, model="tiny", api_key=KEY, progress=False) as model:
        model.transport.timeout = 1e-3  # far less than a forward pass with every hook takes
        with pytest.raises(RemoteTimeoutError, match="deadline"):
            model.run_with_cache(PROMPTS * 4)
        model.transport.timeout = None
        assert model.run_with_cache(PROMPTS[0], names_filter=RES)[1][RES].shape[0] == 1  # still usable


def test_unavailable_retries_are_bounded():
    port = _free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="after 3 attempt"):
        telelens.connect(f"grpc://127.0.0.1:{port}", retry=RetryPolicy(attempts=3, initial_backoff=0.05))
    assert time.monotonic() - start < 5


def test_retries_reach_a_server_that_starts_late(tiny_folder, remote, tmp_path):
    from telelens.server.app import run_server
    from telelens.server.config import ServeConfig

    port = _free_port()
    config = ServeConfig.for_model(
        str(tiny_folder), name="tiny", port=port, data_dir=str(tmp_path / "late"), process_weights=False
    )
    started, stop = threading.Event(), threading.Event()

    def serve_later() -> None:
        time.sleep(1.0)
        with run_server(config):
            started.set()
            stop.wait(60)

    thread = threading.Thread(target=serve_later, daemon=True)
    thread.start()
    try:
        # a Run sent before the server exists is retried (nothing of it arrived yet)
        patient = RetryPolicy(attempts=60, initial_backoff=0.1, max_backoff=0.5)
        transport = Transport(f"grpc://127.0.0.1:{port}", retry=patient, progress=False)
        late = RemoteModel(transport, remote.info)
        with late:
            _, cache = late.run_with_cache(PROMPTS[0], names_filter=RES)
            assert started.is_set() and late.transport.last_run.attempts > 1
            _, ref = remote.run_with_cache(PROMPTS[0], names_filter=RES)
            assert torch.equal(cache[RES], ref[RES])
            with telelens.connect(f"grpc://127.0.0.1:{port}", progress=False) as again:  # no keys there
                assert again.model_name == "tiny"
    finally:
        stop.set()
        thread.join(60)


def test_tls(tiny_folder, remote, tmp_path):
    import subprocess

    from telelens.server.app import run_server
    from telelens.server.config import ServeConfig

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    config = ServeConfig.for_model(
        str(tiny_folder), name="tiny", port=0, data_dir=str(tmp_path / "tls"),
        tls={"cert_file": str(cert), "key_file": str(key)}, process_weights=False,
    )  # fmt: skip
    with run_server(config) as server:
        with telelens.connect(f"grpcs://localhost:{server.port}", tls=str(cert), progress=False) as secure:
            assert secure.transport.tls
            _, cache = secure.run_with_cache(PROMPTS[0], names_filter=RES)
            assert torch.equal(cache[RES], remote.run_with_cache(PROMPTS[0], names_filter=RES)[1][RES])
        with pytest.raises(ServerUnavailableError):  # plaintext to a TLS port: no connection
            telelens.connect(f"grpc://localhost:{server.port}", retry=RetryPolicy(attempts=1), timeout=5)
    with pytest.warns(UserWarning, match="without TLS"):  # a key to a remote host in the clear
        Transport("grpc://203.0.113.1:50051", api_key="k").close()


# ---------------------------------------------------------------------------------------- wire units
def test_parse_target():
    assert parse_target("grpc://pool:50051") == ("pool:50051", False)
    assert parse_target("grpcs://pool.example") == ("pool.example:50051", True)
    assert parse_target("localhost:1234") == ("localhost:1234", False)
    assert parse_target("grpc://[::1]:7") == ("[::1]:7", False)
    with pytest.raises(ValueError, match="scheme"):
        parse_target("ftp://x")


def _header(
    name: str, shape: list[int], dtype: tensor_pb2.DType = tensor_pb2.DTYPE_FLOAT32
) -> service_pb2.ResultHeader:
    size = {tensor_pb2.DTYPE_FLOAT32: 4, tensor_pb2.DTYPE_INT64: 8, tensor_pb2.DTYPE_BOOL: 1}[dtype]
    n = 1
    for d in shape:
        n *= d
    return service_pb2.ResultHeader(name=name, dtype=dtype, shape=shape, nbytes=n * size)


def test_result_assembly_refuses_broken_streams():
    data = torch.arange(6, dtype=torch.float32).numpy().tobytes()
    a = ResultAssembler()
    a.header(_header("x", [2, 3]))
    a.chunk(Chunk("x", 12, memoryview(data[12:])))  # out of order is fine
    a.chunk(Chunk("x", 0, memoryview(data[:12])))
    assert torch.equal(a.finish()["x"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    cases = [
        (lambda a: a.chunk(Chunk("y", 0, memoryview(b"1234"))), "before its header"),
        (lambda a: a.chunk(Chunk("x", 20, memoryview(data[:8]))), "past its 24 bytes"),
        (lambda a: (a.chunk(Chunk("x", 0, memoryview(data[:8]))), a.finish()), "received 8 of 24"),
        (lambda a: (a.chunk(Chunk("x", 0, memoryview(data[:16]))), a.chunk(Chunk("x", 8, memoryview(data[8:]))), a.finish()), "overlapping"),
        (lambda a: a.header(_header("x", [1])), "two headers"),
        (lambda a: a.header(service_pb2.ResultHeader(name="z", dtype=1, shape=[2], nbytes=9)), "needs 8"),
        (lambda a: a.header(service_pb2.ResultHeader(name="z", dtype=99, shape=[2], nbytes=8)), "unknown dtype"),
    ]  # fmt: skip
    for action, message in cases:
        a = ResultAssembler()
        a.header(_header("x", [2, 3]))
        with pytest.raises(ProtocolError, match=message):
            action(a)
    a = ResultAssembler()
    a.header(_header("b", [2], dtype=tensor_pb2.DTYPE_BOOL))
    a.chunk(Chunk("b", 0, memoryview(b"\x01\x02")))
    with pytest.raises(ProtocolError, match="bool"):
        a.finish()
    with pytest.raises(ProtocolError, match="max_result_bytes"):
        ResultAssembler(max_result_bytes=10).header(_header("x", [2, 3]))


def test_response_parser_never_raises():
    import random

    rng = random.Random(0)
    chunk = service_pb2.RunResponse(chunk=service_pb2.ResultChunk(name="x", offset=300, data=b"abc"))
    raw = chunk.SerializeToString()
    parsed = parse_run_response(raw)
    assert isinstance(parsed, Chunk) and (parsed.name, parsed.offset, bytes(parsed.data)) == (
        "x",
        300,
        b"abc",
    )
    for _ in range(2000):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        if rng.random() < 0.5:
            blob = raw[: rng.randrange(len(raw))] + blob
        parse_run_response(blob)  # a Chunk, a message or Malformed: never an exception


# ---------------------------------------------------------------------------------------- CLI
def test_cli_models_and_info(url, capsys, monkeypatch):
    from telelens.cli import main

    monkeypatch.setenv("TELELENS_API_KEY", KEY)
    assert main(["models", "--server", url]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "GPT2LMHeadModel" in out
    assert main(["info", "tiny", "--server", url, "--hooks"]) == 0
    out = capsys.readouterr().out
    assert "n_layers" in out and PAT in out and "tokenizer" in out
    assert "weight processing" in out and "none (as from_pretrained_no_processing" in out
    assert main(["info", "tiny", "--server", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["d_model"] == 32
