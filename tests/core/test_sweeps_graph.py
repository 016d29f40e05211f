"""The Sweep graph node on the batched engine: graph grid == local engine == naive loop.

Built with the declarative client API (``telelens.trace.patching.sweep``, an ``ops`` metric
evaluated on the worker) and run through ``LocalBackend``, as a remote model would run it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from telelens.client import ops
from telelens.client import patching as client_patching
from telelens.core import patching
from telelens.core.config import HookedTransformerConfig
from telelens.core.graph.execute import execute
from telelens.core.graph.local import LocalBackend
from telelens.core.graph.sweep import run_sweep, sweep_geometry
from telelens.core.graph.validate import check
from telelens.core.hooked_transformer import HookedTransformer
from telelens.protos import ir
from telelens.trace.tracing import Tracer

N_LAYERS, N_HEADS, POS, BATCH, VOCAB = 3, 4, 6, 2, 50
TOL = 1e-5
GQA = dict(
    n_key_value_heads=2,
    positional_embedding_type="rotary",
    normalization_type="RMS",
    gated_mlp=True,
    act_fn="silu",
)


def make_model(**overrides) -> HookedTransformer:
    kwargs: dict[str, Any] = dict(
        n_layers=N_LAYERS, d_model=16, n_ctx=16, d_head=4, n_heads=N_HEADS, d_mlp=32, d_vocab=VOCAB
    )
    kwargs.update(act_fn="gelu", initializer_range=0.4, seed=0)
    return HookedTransformer(HookedTransformerConfig(**{**kwargs, **overrides})).eval()


@pytest.fixture(scope="module", params=["gpt2", "gqa"])
def setup(request):
    model = make_model(**(GQA if request.param == "gqa" else {}))
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(0, VOCAB, (BATCH, POS), generator=gen)
    corrupted = torch.randint(0, VOCAB, (BATCH, POS), generator=gen)
    _, cache = model.run_with_cache(clean, return_cache_object=False)
    return model, clean, corrupted, cache


CASES = [
    ("resid_pre", None, "get_act_patch_resid_pre"),
    ("attn_out", None, "get_act_patch_attn_out"),
    ("mlp_out", None, "get_act_patch_mlp_out"),
    ("attn_head_out_all_pos", None, "get_act_patch_attn_head_out_all_pos"),
    ("attn_head_out_by_pos", None, "get_act_patch_attn_head_out_by_pos"),
    ("attn_head_pattern_all_pos", None, "get_act_patch_attn_head_pattern_all_pos"),
    ("v", ("layer", "pos", "head"), "get_act_patch_attn_head_v_by_pos"),
    ("k", ("layer", "head"), "get_act_patch_attn_head_k_all_pos"),
]


@pytest.mark.parametrize(("activation", "axes", "helper"), CASES, ids=[c[0] for c in CASES])
def test_graph_sweep_equals_local_engine_and_naive(setup, activation, axes, helper):
    model, clean, corrupted, cache = setup
    metric = ops.logit_diff(7, 3)
    grid = client_patching.sweep(LocalBackend(model), corrupted, clean, activation, axes, metric=metric)
    local = getattr(patching, helper)(model, corrupted, cache, metric, progress=False)
    naive = getattr(patching, helper)(model, corrupted, cache, metric, method="naive", progress=False)
    assert grid.shape == naive.shape and grid.dtype == torch.float32
    torch.testing.assert_close(grid, local, atol=TOL, rtol=0)
    torch.testing.assert_close(grid, naive, atol=TOL, rtol=0)


def test_normalized_per_prompt_metric(setup):
    """A metric with one answer pair per prompt (a constant inside the metric), normalized on the worker."""
    model, clean, corrupted, cache = setup
    right, wrong = torch.tensor([7, 11]), torch.tensor([3, 2])
    metric = ops.logit_diff(right, wrong)
    grid = client_patching.sweep(
        LocalBackend(model), corrupted, clean, "attn_head_out_by_pos", metric=metric, normalize=True
    )
    raw = patching.get_act_patch_attn_head_out_by_pos(
        model, corrupted, cache, metric, method="naive", progress=False
    )
    with torch.inference_mode():
        m_clean, m_corrupted = float(metric(model(clean))), float(metric(model(corrupted)))
    torch.testing.assert_close(grid, (raw - m_corrupted) / (m_clean - m_corrupted), atol=1e-4, rtol=0)


def test_progress_per_cell_block_and_the_fallback_agrees(setup):
    model, clean, corrupted, _ = setup
    metric = ops.logit_diff(7, 3)
    with Tracer(LocalBackend(model)) as t:
        clean_run, corrupted_run = t.run(clean), t.run(corrupted)
        t.save(
            client_patching.add_sweep(
                t.builder, corrupted_run, clean_run, "resid_pre", ("layer", "pos"), metric
            )
        )
        graph = t.graph
    calls: list[tuple[int, int]] = []
    out = execute(model, graph, progress=lambda done, total: calls.append((done, total)))
    total = 1 + N_LAYERS * POS  # the clean pass, then one count per cell
    assert calls == [(i, total) for i in range(1, total + 1)]

    checked = check(model, graph)
    sweep = next(n for n in graph.nodes if isinstance(n, ir.Sweep))
    geometry = sweep_geometry(model, checked.table, sweep, POS)
    hooks = list(geometry.hooks)
    _, cache = model.run_with_cache(clean, names_filter=hooks, return_cache_object=False)
    clean_acts = {layer: cache[h] for layer, h in enumerate(hooks)}

    def fn(logits):
        return metric(logits)

    with torch.inference_mode():
        fast = run_sweep(model, geometry, clean_acts, corrupted, None, fn)
        naive = run_sweep(model, geometry, clean_acts, corrupted, None, fn, method="naive")
    torch.testing.assert_close(fast, naive, atol=TOL, rtol=0)
    torch.testing.assert_close(out[next(iter(out))], naive, atol=TOL, rtol=0)


def test_client_refuses_bad_requests(setup):
    model, clean, corrupted, _ = setup
    backend = LocalBackend(model)
    with pytest.raises(TypeError, match="needs a metric"):
        client_patching.sweep(backend, corrupted, clean)
    with pytest.raises(ValueError, match="axes"):
        client_patching.sweep(backend, corrupted, clean, "z", ("head",), metric=ops.logit(3))
    with pytest.raises(TypeError, match="graph value"):
        client_patching.sweep(backend, corrupted, clean, metric=lambda logits: 1.0)
    with pytest.raises(ir.GraphValidationError, match=r"not an activation|unknown hook"):
        client_patching.sweep(backend, corrupted, clean, "resid_pree", metric=ops.logit(3))


def test_pattern_rows_of_every_head_by_destination(setup):
    """A sweep with no head axis patches every head's pattern row: the all-heads path of the engine."""
    model, clean, corrupted, cache = setup
    metric = ops.logit_diff(7, 3)
    grid = client_patching.sweep(
        LocalBackend(model), corrupted, clean, "pattern", ("layer", "pos"), metric=metric
    )

    def rows_of_all_heads(act, index, clean_act):
        act[:, :, index[1]] = clean_act[:, :, index[1]]
        return act

    naive = patching.generic_activation_patch(
        model, corrupted, cache, metric, rows_of_all_heads, "pattern", index_axis_names=("layer", "pos"),
        method="naive", progress=False,
    )  # fmt: skip
    assert grid.shape == (N_LAYERS, POS)
    torch.testing.assert_close(grid, naive, atol=TOL, rtol=0)
