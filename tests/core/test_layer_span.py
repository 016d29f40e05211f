"""``stop_at_layer`` / ``start_at_layer`` as graphs (``telelens.trace.builders``) give the local numbers.

The local ``HookedTransformer`` runs them with torch hooks (TransformerLens's semantics: the
output of ``stop_at_layer=L`` is the residual entering block L; ``start_at_layer=L`` takes it
as input; only hooks that fire are cached). The graph versions go through the executor
(``LocalBackend``, the executor a server runs) and must agree exactly; the planner starts a
``start_at_layer`` pass at that block instead of recomputing the blocks before it.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import GPT2, LLAMA_GQA, tiny_model

from telelens.core.graph.local import LocalBackend
from telelens.core.graph.plan import RunGroup, make_plan
from telelens.core.graph.validate import check
from telelens.core.hooked_transformer import HookedTransformer
from telelens.trace import builders, ops

N_LAYERS = 3
LAYERS = [0, 1, -1, N_LAYERS]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request: pytest.FixtureRequest) -> HookedTransformer:
    preset = {"gpt2": GPT2, "llama": {**LLAMA_GQA, "tie_word_embeddings": True}}[request.param]
    return tiny_model(preset, norm_noise=0.1)


@pytest.fixture(scope="module")
def backend(model: HookedTransformer) -> LocalBackend:
    return LocalBackend(model)


TOKENS = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(0))


def assert_same_cache(local: dict, graph: dict) -> None:
    assert list(graph) == list(local)  # the same hooks, in forward order
    for name in local:
        assert torch.equal(graph[name], local[name]), name


@pytest.mark.parametrize("layer", LAYERS)
def test_stop_at_layer(model: HookedTransformer, backend: LocalBackend, layer: int) -> None:
    out, cache = model.run_with_cache(TOKENS, stop_at_layer=layer, return_cache_object=False)
    got, got_cache = builders.run_with_cache(backend, TOKENS, stop_at_layer=layer)
    assert got is not None and torch.equal(got, out)
    assert_same_cache(cache, got_cache)
    assert not any(n.startswith("ln_final") for n in got_cache)
    fast = builders.run_with_hooks(backend, TOKENS, stop_at_layer=layer)  # nothing cached: fused attention
    assert fast is not None and torch.equal(fast, model(TOKENS, stop_at_layer=layer))
    if layer not in (0, N_LAYERS):  # the residual entering block L
        assert torch.equal(out, model.run_with_cache(TOKENS)[1][f"blocks.{layer % N_LAYERS}.hook_resid_pre"])


@pytest.mark.parametrize("layer", LAYERS)
def test_start_at_layer(model: HookedTransformer, backend: LocalBackend, layer: int) -> None:
    resid = model(TOKENS, stop_at_layer=layer)
    logits, cache = model.run_with_cache(resid, start_at_layer=layer, return_cache_object=False)
    got, got_cache = builders.run_with_cache(backend, resid, start_at_layer=layer)
    assert got is not None and torch.equal(got, logits)
    assert_same_cache(cache, got_cache)
    assert not any(n in got_cache for n in ("hook_embed", "hook_pos_embed"))
    torch.testing.assert_close(logits, model(TOKENS), atol=1e-5, rtol=1e-5)
    loss = model(resid, start_at_layer=layer, return_type="loss", tokens=TOKENS)
    got_loss = builders.run_with_hooks(
        backend, resid, start_at_layer=layer, return_type="loss", tokens=TOKENS
    )
    assert got_loss is not None and torch.allclose(got_loss, loss, atol=1e-6, rtol=0)


def test_start_and_stop_together(model: HookedTransformer, backend: LocalBackend) -> None:
    resid = model(TOKENS, stop_at_layer=1)
    want = model(resid, start_at_layer=1, stop_at_layer=2)
    got = builders.run_with_hooks(backend, resid, start_at_layer=1, stop_at_layer=2)
    assert got is not None and torch.equal(got, want)
    same = builders.run_with_hooks(backend, resid, start_at_layer=2, stop_at_layer=1)  # no block runs
    assert same is not None and torch.equal(same, model(resid, start_at_layer=2, stop_at_layer=1))


def test_hooks_outside_the_span_never_fire(model: HookedTransformer, backend: LocalBackend) -> None:
    """A hook before ``start_at_layer`` (or after ``stop_at_layer``) does nothing, as locally."""
    resid = model(TOKENS, stop_at_layer=1)
    head = ("blocks.1.attn.hook_z", ops.zero_ablate(head=1))
    early = ("blocks.0.hook_resid_post", ops.zero_ablate())
    got = builders.run_with_hooks(backend, resid, [early, head], start_at_layer=1)

    def zero_head(z: torch.Tensor, hook: object) -> torch.Tensor:
        z[:, :, 1] = 0
        return z

    def zero_all(x: torch.Tensor, hook: object) -> torch.Tensor:
        return torch.zeros_like(x)

    want = model.run_with_hooks(
        resid,
        start_at_layer=1,
        fwd_hooks=[("blocks.0.hook_resid_post", zero_all), ("blocks.1.attn.hook_z", zero_head)],
    )
    assert got is not None and torch.equal(got, want)
    late = builders.run_with_hooks(
        backend, TOKENS, [("blocks.2.hook_resid_pre", ops.zero_ablate())], stop_at_layer=2
    )
    assert late is not None and torch.equal(late, model(TOKENS, stop_at_layer=2))
    # A hook at the start block sees the input (and may change it), as locally.
    pre = builders.run_with_hooks(
        backend, resid, [("blocks.1.hook_resid_pre", ops.zero_ablate())], start_at_layer=1
    )
    want = model.run_with_hooks(resid, start_at_layer=1, fwd_hooks=[("blocks.1.hook_resid_pre", zero_all)])
    assert pre is not None and torch.equal(pre, want)


def test_start_at_layer_honours_the_attention_mask(model: HookedTransformer, backend: LocalBackend) -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])  # left padding
    resid = model(TOKENS, attention_mask=mask, stop_at_layer=2)
    want = model(resid, start_at_layer=2, attention_mask=mask)
    got = builders.run_with_hooks(backend, resid, start_at_layer=2, attention_mask=mask)
    assert got is not None and torch.equal(got, want)
    assert not torch.equal(got, model(resid, start_at_layer=2))  # the mask matters here


def test_the_planner_skips_the_blocks_before_the_start(model: HookedTransformer) -> None:
    resid = model(TOKENS, stop_at_layer=2)
    names = model.hook_names
    graph, _ = builders.build_run_with_cache_graph(
        resid, "blocks.2.hook_resid_post", names, start_at_layer=2, return_type=None
    )
    [group] = make_plan(model, check(model, graph)).steps
    assert isinstance(group, RunGroup) and (group.start_at_layer, group.stop_at_layer) == (2, 3)
    fired: list[str] = []
    with model.hooks(fwd_hooks=[(lambda name: True, lambda t, hook: fired.append(hook.name))]):
        model.execute(graph)
    assert fired[0] == "blocks.2.hook_resid_pre" and fired[-1] == "blocks.2.hook_resid_post"
    assert all(name.startswith("blocks.2.") for name in fired)  # no embedding, no earlier block
    # A read before the start block needs the full pass: no late start, same numbers.
    with model.trace() as t:
        run = t.run(TOKENS)
        early = t.save(run["blocks.0.hook_resid_post"])
        run["blocks.2.hook_resid_pre"] = resid
        logits = t.save(run.logits)
    [group] = make_plan(model, check(model, t.graph)).steps
    assert isinstance(group, RunGroup) and group.start_at_layer is None
    assert torch.equal(early.value, model(TOKENS, stop_at_layer=1))
    torch.testing.assert_close(logits.value, model(resid, start_at_layer=2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("layer", [N_LAYERS + 1, -N_LAYERS - 1])
def test_layer_out_of_range(model: HookedTransformer, backend: LocalBackend, layer: int) -> None:
    resid = model(TOKENS, stop_at_layer=1)
    for arg, value in (("stop_at_layer", TOKENS), ("start_at_layer", resid)):
        match = f"{arg}={layer} is out of range for a model with {N_LAYERS} layers"
        with pytest.raises(ValueError, match=match):
            model(value, **{arg: layer})
        with pytest.raises(ValueError, match=match):
            builders.run_with_cache(backend, value, **{arg: layer})  # type: ignore[arg-type]


def test_start_at_layer_needs_the_residual(model: HookedTransformer, backend: LocalBackend) -> None:
    match = r"with start_at_layer, input must be the residual stream \[batch, pos, d_model\]"
    with pytest.raises(ValueError, match=match):
        model(TOKENS, start_at_layer=1)
    with pytest.raises(ValueError, match=match):
        builders.run_with_cache(backend, TOKENS, start_at_layer=1)
    resid = model(TOKENS, stop_at_layer=1)
    with pytest.raises(ValueError, match="pass tokens= when using start_at_layer"):
        model(resid, start_at_layer=1, return_type="loss")
    with pytest.raises(ValueError, match="pass tokens= when using start_at_layer"):
        builders.run_with_hooks(backend, resid, start_at_layer=1, return_type="loss")
    with pytest.raises(TypeError, match="stop_at_layer must be an int"):
        builders.run_with_cache(backend, TOKENS, stop_at_layer=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="metric"):
        builders.run_with_hooks(backend, TOKENS, metric=ops.logit(3), stop_at_layer=1)
