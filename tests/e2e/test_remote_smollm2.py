"""Remote mode on the real SmolLM2-135M: a server (real Ray) on loopback against the same model locally.

Remote results must equal local results exactly: ``run_with_cache`` (a subset and every
hook), ``run_with_hooks`` with each declarative op, a traced activation-patching experiment,
greedy generation and tokenization. Local mode (``LocalBackend``) runs the same executor on
the same weights; the core's own ``run_with_cache``/``run_with_hooks``/``generate`` are
compared too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import telelens
from telelens.client import RemoteModel, builders, ops

pytestmark = pytest.mark.slow

NAME = "smollm2-135m"
PROMPTS = ["The Eiffel Tower is in the city of", "The Colosseum is in the city of", "Hello"]


@pytest.fixture(scope="module")
def server(ray_cluster: None, smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from telelens.server.app import run_server
    from telelens.server.config import ServeConfig

    data = tmp_path_factory.mktemp("smollm2-server")
    # two torch threads, as in this process: the same matmul blocking, the same numbers
    # served without weight processing: it must then equal ``smollm2`` (from_pretrained_no_processing)
    config = ServeConfig.for_model(
        str(smollm2_path), name=NAME, port=0, data_dir=str(data), num_cpus=2, process_weights=False
    )
    with run_server(config) as handle:
        yield handle


@pytest.fixture(scope="module")
def remote(server: Any) -> Iterator[RemoteModel]:
    model = telelens.connect(f"grpc://{server.address}", model=NAME, progress=False)
    yield model
    model.close()


@pytest.fixture(scope="module")
def backend(smollm2: Any) -> Any:
    from telelens.core.graph.local import LocalBackend

    return LocalBackend(smollm2)


def test_model_and_tokenization_equal_local(remote, smollm2, backend):
    assert remote.hook_names == backend.hook_names and len(remote.hook_names) > 30 * 15
    assert (remote.cfg.n_layers, remote.cfg.n_heads, remote.cfg.n_key_value_heads) == (30, 9, 3)
    texts = [
        "The capital of France is",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n",
        "  spaces, tabs\tand naïve café — 東京 🚀",
        "don't you're isn't . , ?",
        "",
    ]
    for text in texts:
        for prepend_bos in (None, False):
            assert torch.equal(remote.to_tokens(text, prepend_bos), smollm2.to_tokens(text, prepend_bos))
            assert remote.to_str_tokens(text, prepend_bos) == smollm2.to_str_tokens(text, prepend_bos)
        tokens = smollm2.to_tokens(text)
        assert remote.to_string(tokens) == smollm2.to_string(tokens)
    for side in ("left", "right"):
        assert torch.equal(
            remote.to_tokens(texts, padding_side=side), smollm2.to_tokens(texts, padding_side=side)
        )
    assert remote.to_single_token(" Paris") == smollm2.to_single_token(" Paris")


def test_run_with_cache_equals_local(remote, smollm2, backend):
    one = "blocks.6.hook_resid_post"
    subset = lambda n: n.endswith(("hook_resid_post", "hook_pattern"))  # noqa: E731
    for names, prompts in ((one, PROMPTS), (subset, PROMPTS), (None, PROMPTS[0])):  # None: every hook
        logits, cache = remote.run_with_cache(prompts, names_filter=names)
        tokens, mask = smollm2._encode(prompts, None, None)
        mask = None if bool(mask.all()) else mask
        ref_logits, ref = builders.run_with_cache(backend, tokens, names, attention_mask=mask)
        core_logits, core = smollm2.run_with_cache(prompts, names_filter=names)
        assert torch.equal(logits, ref_logits) and torch.equal(logits, core_logits)
        assert list(cache.keys()) == list(ref) == list(core.keys())
        for k in cache:
            assert torch.equal(cache[k], ref[k]), k
            assert torch.equal(cache[k], core[k]), k


def test_bytes_received_for_one_hook(remote):
    hook = "blocks.6.hook_resid_post"
    before, wire = remote.transport.bytes_received, remote.transport.wire_bytes_received
    _, cache = remote.run_with_cache(PROMPTS, names_filter=hook, return_type=None)
    size = cache[hook].numel() * cache[hook].element_size()
    assert remote.transport.bytes_received - before == size
    assert size <= remote.transport.wire_bytes_received - wire <= 1.05 * size


Z, RES = "blocks.8.attn.hook_z", "blocks.8.hook_resid_pre"
STEER = torch.randn(576, generator=torch.Generator().manual_seed(0))
OPS = [
    (Z, ops.zero_ablate(head=[1, 4])),
    ("blocks.3.attn.hook_pattern", ops.zero_ablate(head=0, pos=-1)),
    (Z, ops.mean_ablate(head=2)),
    (RES, ops.resample_ablate(seed=1, pos=-1)),
    (RES, ops.add(STEER, scale=4.0, pos=-1)),
    ("blocks.10.mlp.hook_post", ops.scale(0.0, pos=[2, 3])),
    (RES, ops.clamp(min=-1.0, max=1.0)),
]


@pytest.mark.parametrize("hook, op", OPS, ids=[type(op).__name__ for _, op in OPS])
@torch.no_grad()
def test_run_with_hooks_each_op_equals_local(remote, smollm2, backend, hook, op):
    tokens = smollm2.to_tokens(PROMPTS[:2])  # the two prompts have the same length: no padding
    got = remote.run_with_hooks(tokens, fwd_hooks=[(hook, op)])
    assert torch.equal(got, builders.run_with_hooks(backend, tokens, [(hook, op)]))
    assert torch.equal(got, smollm2.run_with_hooks(tokens, fwd_hooks=[(hook, op)]))


@torch.no_grad()
def test_patch_from_a_remote_cache(remote, smollm2):
    clean, corrupt = (smollm2.to_tokens(p) for p in PROMPTS[:2])
    _, clean_cache = remote.run_with_cache(clean, names_filter=Z)
    op = ops.patch(clean_cache, head=3, pos=-1)
    got = remote.run_with_hooks(corrupt, fwd_hooks=[(Z, op)])
    assert torch.equal(got, smollm2.run_with_hooks(corrupt, fwd_hooks=[(Z, op)]))


def test_eiffel_tower_patching_trace_equals_local(remote, smollm2):
    paris, rome = smollm2.to_single_token(" Paris"), smollm2.to_single_token(" Rome")

    def experiment(model: Any) -> dict[str, torch.Tensor]:
        with model.trace() as t:
            clean = t.run("The Eiffel Tower is in the city of")
            corrupt = t.run("The Colosseum is in the city of")
            t.save(corrupt.logits[0, -1, paris] - corrupt.logits[0, -1, rome], "before")
            patched = t.run("The Colosseum is in the city of")
            # the subject's tokens (" E iffel Tower" / " Col osse um") from the clean run
            patched["blocks.6.hook_resid_post"][:, 2:5] = clean["blocks.6.hook_resid_post"][:, 2:5]
            t.save(patched.logits[0, -1, paris] - patched.logits[0, -1, rome], "after")
            t.save(patched.logits[0, -1].log_softmax(-1), "log_probs")
        return t.result

    got, ref = experiment(remote), experiment(smollm2)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    assert got["after"] > got["before"] + 1  # the patch moves the answer from Rome towards Paris


def test_greedy_generate_equals_local(remote, smollm2):
    kw = dict(max_new_tokens=6, do_sample=False, verbose=False)
    text = remote.generate("The capital of France is", **kw)
    assert text == smollm2.generate("The capital of France is", **kw)
    assert text.startswith("<|im_start|>The capital of France is Paris")
    prompts = ["The capital of France is", "Once upon a time"]
    assert remote.generate(prompts, **kw) == smollm2.generate(prompts, use_past_kv_cache=False, **kw)


def test_logit_lens_equals_local(remote, smollm2):
    """``accumulated_resid(apply_ln=True)`` re-applies the final RMSNorm on the client with the
    server's ``ln_final.w``: the same lens as locally, and its last layer reads " Paris"."""
    text = "The capital of France is"
    logits, cache = remote.run_with_cache(text, names_filter=lambda n: "resid" in n or "ln_final" in n)
    _, ref = smollm2.run_with_cache(text, names_filter=lambda n: "resid" in n or "ln_final" in n)
    lens = cache.accumulated_resid(apply_ln=True, pos_slice=-1)  # [31, 1, d_model]
    assert torch.allclose(lens, ref.accumulated_resid(apply_ln=True, pos_slice=-1), atol=1e-5)
    lens_logits = lens @ remote.W_U  # [31, 1, d_vocab]
    assert torch.allclose(lens_logits[-1, 0], logits[0, -1], atol=1e-3)
    assert remote.to_string(lens_logits[-1, 0].argmax()) == " Paris"


def test_unprocessed_server_says_so_and_equals_no_processing(remote, smollm2):
    assert remote.cfg.weights_processed is False
    assert not any(remote.cfg.weight_processing.values())
    for name in ("W_E", "W_U", "W_Q", "W_in", "b_O"):
        assert torch.equal(getattr(remote, name), getattr(smollm2, name)), name
