"""TransformerLens 3.9's numbers for the API tests (tests/fixtures/tl39/api.json) and the tokenizer they used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

API: dict[str, Any] = json.loads((Path(__file__).parent / "fixtures" / "tl39" / "api.json").read_text())
"""Written by tests/fixtures/tl39/make_api.py (its docstring has the command)."""

WORDS = [
    "<pad>",
    "<bos>",
    "<eos>",
    "<unk>",
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "dog",
    "ran",
    "a",
    "big",
    "red",
]


def make_tokenizer() -> Any:
    """The word-level tokenizer make_api.py builds (same vocabulary, same special tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
