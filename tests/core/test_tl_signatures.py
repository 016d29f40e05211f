"""TransformerLens 3.9's signatures, recorded by tests/fixtures/tl39/make_components.py: telelens's
components, KV cache, ``generate``, ``ActivationCache`` and ``FactoredMatrix`` take the same
parameters in the same order (telelens may add keyword parameters after them)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import telelens.components as components
from telelens import ActivationCache, FactoredMatrix, HookedTransformer
from telelens.core.forward_context import HookedTransformerKeyValueCache, HookedTransformerKeyValueCacheEntry

SIGNATURES: dict[str, list[str]] = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "tl39" / "signatures.json").read_text()
)
OWNERS: dict[str, Any] = {
    "HookedTransformer": HookedTransformer,
    "ActivationCache": ActivationCache,
    "FactoredMatrix": FactoredMatrix,
    "HookedTransformerKeyValueCache": HookedTransformerKeyValueCache,
    "HookedTransformerKeyValueCacheEntry": HookedTransformerKeyValueCacheEntry,
    "components": components,
}


def _ours(dotted: str) -> list[str]:
    owner, *path = dotted.split(".")
    fn: Any = OWNERS[owner]
    for part in path:
        fn = getattr(fn, part)
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.name not in ("self", "cls") and p.kind != p.VAR_KEYWORD]


@pytest.mark.parametrize("dotted", sorted(SIGNATURES))
def test_same_parameters_in_the_same_order(dotted: str) -> None:
    theirs = SIGNATURES[dotted]
    ours = _ours(dotted)
    assert ours[: len(theirs)] == theirs, f"{dotted}: ours {ours}, TransformerLens {theirs}"


def test_generate_takes_transformer_lens_generation_kwargs() -> None:
    model = HookedTransformer(
        {"n_layers": 1, "d_model": 16, "n_ctx": 16, "d_head": 4, "n_heads": 4, "d_vocab": 20, "seed": 0}
    )
    tokens = torch.tensor([[1, 2, 3, 4]])
    kw: dict[str, Any] = dict(max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=False)
    out = model.generate(tokens, output_logits=True, return_dict_in_generate=True, **kw)
    assert torch.equal(out.sequences, model.generate(tokens, **kw))
    assert len(out.logits) == 3 and out.logits[0].shape == (1, 20)
    assert torch.equal(out.logits[0].argmax(-1), out.sequences[:, 4])
    with pytest.warns(UserWarning, match="ignoring"):
        model.generate(tokens, no_such_option=1, **kw)
    embeds = model.generate(tokens, return_type="embeds", **kw)
    assert embeds.shape == (1, 7, 16)
    with pytest.raises(ValueError, match="return_type"):
        model.generate(tokens, return_type="logits", **kw)
