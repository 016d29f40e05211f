"""telelens.utils as TransformerLens 3.9's utils: every public name, and TL's numbers for each helper.

Expected values come from TransformerLens 3.9 (tests/fixtures/tl39/make_api.py -> api.json).
"""

from __future__ import annotations

import pytest
import torch
from tl39_fixtures import API, make_tokenizer

from telelens import utils
from telelens.lens.factored_matrix import FactoredMatrix

ATOL = 1e-5


def test_every_public_transformer_lens_utils_name_exists():
    missing = [name for name in API["utils_names"] if not hasattr(utils, name)]
    assert not missing
    assert utils.get_pos_offset(None, 2) == 0


@pytest.mark.parametrize("key", [k for k in API["init"] if not k.startswith("fan/")])
def test_init_functions_match_under_a_seed(key):
    case = API["init"][key]
    torch.manual_seed(0)
    t = torch.empty(case["shape"])
    out = getattr(utils, key.split("/")[0])(t, **case["kwargs"])
    assert out is t
    torch.testing.assert_close(t.flatten(), torch.tensor(case["values"]), atol=ATOL, rtol=0)


def test_fan_in_and_fan_out():
    for key, fans in API["init"].items():
        if key.startswith("fan/"):
            shape = [int(d) for d in key[4:].split("x")]
            assert list(utils.calc_fan_in_and_fan_out(torch.empty(shape))) == fans
    with pytest.raises(ValueError):
        utils.calc_fan_in_and_fan_out(torch.tensor(1.0))


@pytest.mark.parametrize("i", range(len(API["sample_logits"]["cases"])))
def test_sample_logits_matches_under_a_seed(i):
    data = API["sample_logits"]
    case = data["cases"][i]
    logits, tokens = torch.tensor(data["logits"]), torch.tensor(data["tokens"])
    torch.manual_seed(7)
    draws = [utils.sample_logits(logits.clone(), tokens=tokens, **case["kwargs"]).tolist() for _ in range(4)]
    assert draws == case["draws"]


def test_sample_logits_argument_checks():
    logits = torch.zeros(2, 5)
    with pytest.raises(AssertionError, match="top_k"):
        utils.sample_logits(logits, top_k=0)
    with pytest.raises(AssertionError, match="top_p"):
        utils.sample_logits(logits, top_p=1.5)
    with pytest.raises(AssertionError, match="input_tokens"):
        utils.sample_logits(logits, freq_penalty=1.0)


def test_lm_helpers_and_activations():
    d = API["lm"]
    logits, tokens, mask = torch.tensor(d["logits"]), torch.tensor(d["tokens"]), torch.tensor(d["mask"])
    assert utils.lm_cross_entropy_loss(logits, tokens).item() == pytest.approx(d["loss"], abs=ATOL)
    masked = utils.lm_cross_entropy_loss(logits, tokens, attention_mask=mask).item()
    assert masked == pytest.approx(d["loss_masked"], abs=ATOL)
    per_token = utils.lm_cross_entropy_loss(logits, tokens, per_token=True)
    torch.testing.assert_close(per_token, torch.tensor(d["loss_per_token"]), atol=ATOL, rtol=0)
    assert utils.lm_accuracy(logits, tokens).item() == pytest.approx(d["accuracy"], abs=ATOL)
    x = torch.tensor(d["x"])
    for name in ("gelu_new", "gelu_fast", "solu"):
        torch.testing.assert_close(getattr(utils, name)(x), torch.tensor(d[name]), atol=ATOL, rtol=0)
    assert utils.get_offset_position_ids(1, mask).tolist() == d["offset_position_ids"]
    a = FactoredMatrix(torch.tensor(d["comp_A"]), torch.tensor(d["comp_B"]))
    b = FactoredMatrix(torch.tensor(d["comp_C"]), torch.tensor(d["comp_D"]))
    torch.testing.assert_close(
        utils.composition_scores(a, b), torch.tensor(d["composition_scores"]), atol=ATOL, rtol=0
    )


def test_tensor_and_dict_helpers():
    x = torch.arange(6.0).reshape(2, 3)
    assert utils.get_cumsum_along_dim(x, -1, reverse=True).tolist() == [[3.0, 3.0, 2.0], [12.0, 9.0, 5.0]]
    rep = utils.repeat_along_head_dimension(torch.ones(2, 3, 4), n_heads=5)
    assert rep.shape == (2, 3, 5, 4) and rep.is_contiguous()
    d = {"blocks.0.attn.W_Q": 1, "blocks.0.mlp.W_in": 2, "blocks.1.attn.W_K": 3}
    assert utils.filter_dict_by_prefix(d, "blocks.0") == {"attn.W_Q": 1, "mlp.W_in": 2}
    assert utils.is_library_available("torch") and not utils.is_library_available("not_a_library_xyz")
    assert utils.override_or_use_default_value(True, None) is True
    assert utils.override_or_use_default_value(True, False) is False
    assert utils.USE_DEFAULT_VALUE is None


def test_check_structure_prints(capsys):
    t = torch.arange(9.0).reshape(3, 3)
    utils.check_structure(t, t * 2)
    utils.check_structure(t, -t)
    assert capsys.readouterr().out.splitlines() == ["PASSED", "row mismatch: [0, 1]"]


@pytest.mark.parametrize("i", range(len(API["tokens"]["cases"])))
def test_tokenize_and_concatenate_on_a_list_of_texts(i):
    case = API["tokens"]["cases"][i]
    out = utils.tokenize_and_concatenate(API["tokens"]["texts"], make_tokenizer(), **case["kwargs"])
    assert out["tokens"].dtype == torch.int64
    assert out["tokens"].tolist() == case["tokens"]


def test_tokenize_and_concatenate_on_a_dataset():
    import datasets  # a dev dependency

    case = API["tokens"]["cases"][0]
    ds = datasets.Dataset.from_dict(
        {"text": API["tokens"]["texts"], "meta": [0] * len(API["tokens"]["texts"])}
    )
    out = utils.tokenize_and_concatenate(ds, make_tokenizer(), num_proc=None, **case["kwargs"])
    assert [row.tolist() for row in out["tokens"]] == case["tokens"]


def test_attention_mask_and_bos_removal():
    d, tok = API["tokens"], make_tokenizer()
    padded = torch.tensor(d["padded"])
    for side in ("left", "right"):
        assert (
            utils.get_attention_mask(tok, padded, True, padding_side=side).tolist()
            == d[f"attention_mask/{side}"]
        )
    assert (
        utils.get_tokens_with_bos_removed(tok, padded[:2], padding_side="left").tolist()
        == d["bos_removed/left"]
    )
    assert (
        utils.get_tokens_with_bos_removed(tok, padded, padding_side="right").tolist()
        == padded[:, 1:].tolist()
    )
    assert utils.get_input_with_manually_prepended_bos("<bos>", ["a", "b"]) == ["<bos>a", "<bos>b"]
    assert utils.get_input_with_manually_prepended_bos(None, "a") == "a"


def test_locally_overriden_defaults():
    class Model:
        def __init__(self):
            self.cfg = type("Cfg", (), {"default_prepend_bos": True})()
            self.tokenizer = make_tokenizer()
            self.tokenizer.padding_side = "right"

    model = Model()
    with utils.LocallyOverridenDefaults(model, prepend_bos=False, padding_side="left"):
        assert model.cfg.default_prepend_bos is False and model.tokenizer.padding_side == "left"
    assert model.cfg.default_prepend_bos is True and model.tokenizer.padding_side == "right"
    with utils.LocallyOverridenDefaults(model, prepend_bos=None):
        assert model.cfg.default_prepend_bos is True
    with pytest.raises(AssertionError):
        utils.LocallyOverridenDefaults(model, temperature=1.0)
