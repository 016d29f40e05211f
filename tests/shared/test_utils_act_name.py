"""get_act_name (TransformerLens's shorthand) and the Slice helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from telelens.lens.utils import Slice, get_act_name, remove_batch_dim, to_numpy

CASES = [
    (("pattern", 3), "blocks.3.attn.hook_pattern"),
    (("attn", 3), "blocks.3.attn.hook_pattern"),
    (("attn_scores", 0), "blocks.0.attn.hook_attn_scores"),
    (("attn_logits", 0), "blocks.0.attn.hook_attn_scores"),
    (("resid_pre", 0), "blocks.0.hook_resid_pre"),
    (("resid_mid", 1), "blocks.1.hook_resid_mid"),
    (("resid_post", 2), "blocks.2.hook_resid_post"),
    (("scale", 2, "ln1"), "blocks.2.ln1.hook_scale"),
    (("scale", 2, "ln2"), "blocks.2.ln2.hook_scale"),
    (("scale",), "ln_final.hook_scale"),
    (("scale", None, "ln_final"), "ln_final.hook_scale"),
    (("normalized",), "ln_final.hook_normalized"),
    (("normalized", 27, "ln2"), "blocks.27.ln2.hook_normalized"),
    (("q", 1), "blocks.1.attn.hook_q"),
    (("query", 1), "blocks.1.attn.hook_q"),
    (("k", 6, "a"), "blocks.6.attn.hook_k"),
    (("key", 6), "blocks.6.attn.hook_k"),
    (("v", 0), "blocks.0.attn.hook_v"),
    (("value", 0), "blocks.0.attn.hook_v"),
    (("z", 4), "blocks.4.attn.hook_z"),
    (("result", 4), "blocks.4.attn.hook_result"),
    (("rot_q", 1), "blocks.1.attn.hook_rot_q"),
    (("rot_k", 1), "blocks.1.attn.hook_rot_k"),
    (("pre", 2), "blocks.2.mlp.hook_pre"),
    (("mlp_pre", 2), "blocks.2.mlp.hook_pre"),
    (("pre_linear", 2), "blocks.2.mlp.hook_pre_linear"),
    (("post", 2), "blocks.2.mlp.hook_post"),
    (("mlp_post", 2), "blocks.2.mlp.hook_post"),
    (("mlp_out", 2), "blocks.2.hook_mlp_out"),
    (("attn_out", 2), "blocks.2.hook_attn_out"),
    (("attn_out", 2, "b"), "blocks.2.hook_attn_out"),
    (("mlp_in", 1), "blocks.1.hook_mlp_in"),
    (("embed",), "hook_embed"),
    (("pos_embed",), "hook_pos_embed"),
    (("k6",), "blocks.6.attn.hook_k"),
    (("scale4ln1",), "blocks.4.ln1.hook_scale"),
    (("pre5",), "blocks.5.mlp.hook_pre"),
    (("blocks.0.hook_resid_pre",), "blocks.0.hook_resid_pre"),
    (("hook_embed",), "hook_embed"),
    (("resid_pre", "3"), "blocks.3.hook_resid_pre"),
]


@pytest.mark.parametrize(("args", "want"), CASES)
def test_get_act_name(args: tuple, want: str) -> None:
    assert get_act_name(*args) == want


def test_slice_modes() -> None:
    x = torch.arange(24).reshape(2, 12)
    assert Slice(None).mode == "identity" and Slice(None).apply(x) is x
    assert torch.equal(Slice(-1).apply(x, dim=-1), x[:, -1]) and Slice(3).mode == "int"
    assert torch.equal(Slice((1, 5)).apply(x, dim=1), x[:, 1:5])
    assert torch.equal(Slice((3,)).apply(x, dim=1), x[:, :3])
    assert torch.equal(Slice((1, 9, 3)).apply(x, dim=1), x[:, 1:9:3])
    assert torch.equal(Slice([0, 4]).apply(x, dim=1), x[:, [0, 4]])
    assert torch.equal(Slice(torch.tensor([2, 3])).apply(x, dim=-1), x[:, [2, 3]])
    assert torch.equal(Slice(np.array([1])).apply(x, dim=0), x[[1]])
    assert Slice(4).indices().tolist() == [4] and Slice((1, 9, 3)).indices(12).tolist() == [1, 4, 7]
    assert Slice.unwrap(2).mode == "array" and Slice.unwrap(Slice(2)).mode == "int"
    with pytest.raises(ValueError):
        Slice("bad")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_ctx"):
        Slice((1, 3)).indices()


def test_tensor_helpers() -> None:
    assert remove_batch_dim(torch.zeros(1, 3)).shape == (3,) and remove_batch_dim(
        torch.zeros(2, 3)
    ).shape == (2, 3)
    assert to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float32
    assert to_numpy([1, 2]).tolist() == [1, 2] and to_numpy(3).item() == 3
