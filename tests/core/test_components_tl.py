"""Components built alone, as TransformerLens documents them, against TransformerLens 3.9's numbers.

Each case of tests/fixtures/tl39/components.json (made by make_components.py with TransformerLens)
builds ``telelens.components.<Class>(cfg_dict, ...)`` exactly as the TransformerLens code did,
loads TransformerLens's ``state_dict()`` into it, calls it with TransformerLens's keyword
arguments and compares the output and every hook's activation (fp32).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import telelens.components as components
from telelens.components import (
    Attention,
    GroupedQueryAttention,
    LayerNorm,
    LayerNormPre,
    RMSNorm,
    TransformerBlock,
)
from telelens.core.components.kv_cache import HookedTransformerKeyValueCacheEntry
from telelens.core.hook_points import HookPoint

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tl39"
CASES = [c for c in json.loads((FIXTURES / "components.json").read_text()) if c["cls"] != "HookedTransformer"]
TENSORS = load_file(FIXTURES / "components.safetensors")
ATOL = 1e-5
# TransformerLens's Unembed has hook_in/hook_out; telelens's does not (yet): adding them would add
# two hook points to every model's hook list, which the other slices pin down.
NOT_IN_TELELENS = {("Unembed", "hook_in"), ("Unembed", "hook_out")}


def _prefixed(prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in TENSORS.items() if k.startswith(prefix)}


def _inputs(name: str, keys: list[str], group: str = "in") -> dict[str, torch.Tensor]:
    """The inputs of a call; key and value inputs equal to the query input are the same tensor,
    as TransformerLens's block passes them (so the fused projection runs)."""
    got = {k: TENSORS[f"{name}.{group}.{k}"] for k in keys}
    query = got.get("query_input")
    for k in ("key_input", "value_input"):
        if query is not None and k in got and torch.equal(got[k], query):
            got[k] = query
    return got


def _hook_everything(module: torch.nn.Module, store: dict[str, torch.Tensor]) -> None:
    for name, hp in module.named_modules():
        if isinstance(hp, HookPoint):

            def save(t: torch.Tensor, hook: Any, name: str = name) -> None:
                store[name] = t.detach().clone()

            hp.add_hook(save)


def _close(ours: torch.Tensor, theirs: torch.Tensor, rows: torch.Tensor | None, what: str) -> None:
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
    if rows is not None and ours.dim() >= 3 and ours.shape[:2] == rows.shape:
        ours, theirs = ours[rows], theirs[rows]  # padding positions' outputs are unused
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=1e-5, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
@pytest.mark.parametrize("hooked", [False, True], ids=["fused", "hooked"])
def test_component_matches_transformer_lens(case: dict[str, Any], hooked: bool) -> None:
    name = case["name"]
    module = getattr(components, case["cls"])(dict(case["cfg"]), **case["ctor"])
    result = module.load_state_dict(_prefixed(f"{name}.sd."), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    kwargs: dict[str, Any] = {**_inputs(name, case["inputs"]), **case["scalars"]}
    with torch.no_grad():
        if case["prefix_inputs"]:
            entry = HookedTransformerKeyValueCacheEntry.init_cache_entry(dict(case["cfg"]), "cpu", 2)
            module(**_inputs(name, case["prefix_inputs"], "prefix"), past_kv_cache_entry=entry)
            kwargs["past_kv_cache_entry"] = entry
        hooks: dict[str, torch.Tensor] = {}
        if hooked:  # every hook listening: the explicit (unfused) path, and the activations to compare
            _hook_everything(module, hooks)
        out = module(**kwargs)
    rows = TENSORS.get(f"{name}.rows")
    _close(out, TENSORS[f"{name}.out"], rows, f"{name} output")
    if not hooked:
        return
    for hook_name in case["hooks"]:
        theirs = TENSORS[f"{name}.hook.{hook_name}"]
        if (case["cls"], hook_name) in NOT_IN_TELELENS:
            continue
        if hook_name not in hooks:
            # TransformerLens fires its switch-gated hooks (hook_mlp_in, hook_attn_in, ...) only
            # when their switch is on; the others must fire here too.
            assert hook_name.endswith(("hook_result", "hook_mlp_in", "hook_attn_in", "_input")), hook_name
            continue
        ours = hooks[hook_name]
        if hook_name.endswith(("hook_attn_scores", "hook_pattern")) and rows is not None:
            keep = rows[:, None, :, None].expand_as(ours)  # query rows of real tokens
            ours, theirs = ours[keep], theirs[keep]
        _close(ours, theirs, rows, f"{name} {hook_name}")


def test_parameter_names_and_shapes_are_transformer_lens() -> None:
    cfg = {"n_layers": 1, "d_model": 16, "n_ctx": 8, "d_head": 4, "n_heads": 4, "d_vocab": 10, "d_mlp": 32}
    attn = Attention(cfg)
    assert attn.W_Q.shape == attn.W_K.shape == attn.W_V.shape == (4, 16, 4)
    assert attn.W_O.shape == (4, 4, 16) and attn.b_Q.shape == (4, 4) and attn.b_O.shape == (16,)
    gqa = GroupedQueryAttention({**cfg, "n_key_value_heads": 2})
    assert gqa._W_K.shape == gqa._W_V.shape == (2, 16, 4) and gqa.W_K.shape == (4, 16, 4)
    assert gqa._b_K.shape == (2, 4) and gqa.b_V.shape == (4, 4)
    assert isinstance(gqa, Attention)
    mlp = components.GatedMLP({**cfg, "gated_mlp": True, "act_fn": "silu"})
    assert mlp.W_in.shape == mlp.W_gate.shape == (16, 32) and mlp.W_out.shape == (32, 16)  # type: ignore[union-attr]
    assert mlp.b_in.shape == (32,) and mlp.b_out.shape == (16,)
    assert components.Embed(cfg).W_E.shape == (10, 16) and components.PosEmbed(cfg).W_pos.shape == (8, 16)
    unembed = components.Unembed(cfg)
    assert unembed.W_U.shape == (16, 10) and unembed.b_U.shape == (10,)
    ln, ln_mlp = LayerNorm(cfg), LayerNorm(cfg, length=32)
    assert ln.b is not None and ln.w.shape == ln.b.shape == (16,) and ln_mlp.w.shape == (32,)
    assert RMSNorm(cfg).b is None
    assert {"hook_q", "hook_k", "hook_v", "hook_z", "hook_attn_scores", "hook_pattern", "hook_result"} <= {
        n for n, _ in attn.named_modules()
    }


def test_block_builds_transformer_lens_classes_and_folding_swaps_them() -> None:
    cfg = {"n_layers": 1, "d_model": 16, "n_ctx": 8, "d_head": 4, "n_heads": 4, "d_vocab": 10}
    block = TransformerBlock({**cfg, "n_key_value_heads": 2, "gated_mlp": True, "act_fn": "silu"}, 0)
    assert isinstance(block.attn, GroupedQueryAttention) and isinstance(block.mlp, components.GatedMLP)
    assert isinstance(block.ln1, LayerNorm)
    block.ln1.kind = "LNPre"  # what folding a norm's weights does  # type: ignore[union-attr]
    assert isinstance(block.ln1, LayerNormPre)


def test_telelens_components_is_the_core_module() -> None:
    import telelens
    import telelens.core.components as core_components

    assert components is core_components and telelens.components is core_components


def test_nonzero_bias_the_module_lacks_is_refused() -> None:
    cfg = {"n_layers": 1, "d_model": 16, "n_ctx": 8, "d_head": 4, "n_heads": 4, "d_vocab": 10, "d_mlp": 32}
    gated = components.GatedMLP({**cfg, "gated_mlp": True, "act_fn": "silu"})
    state = {"W_in": torch.ones(16, 32), "W_gate": torch.ones(16, 32), "W_out": torch.ones(32, 16)}
    state |= {"b_in": torch.ones(32), "b_out": torch.zeros(16)}
    with pytest.raises(RuntimeError, match="adds b_in after the gate"):
        gated.load_state_dict(state)
    attn = Attention({**cfg, "attn_bias": False})
    tl = {n: torch.ones(4, 16, 4) for n in ("W_Q", "W_K", "W_V")} | {"W_O": torch.ones(4, 4, 16)}
    tl |= {n: torch.ones(4, 4) for n in ("b_Q", "b_K", "b_V")} | {"b_O": torch.zeros(16)}
    with pytest.raises(RuntimeError, match="attn_bias=False"):
        attn.load_state_dict(tl)
