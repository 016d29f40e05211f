"""TransformerLens 3.9's numbers for the API tests (tests/fixtures/tl39/api.json) and the tokenizer they used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from word_tokenizer import WORDS, make_tokenizer  # tests/fixtures/tl39, shared with make_api.py

API: dict[str, Any] = json.loads((Path(__file__).parent / "fixtures" / "tl39" / "api.json").read_text())
"""Written by tests/fixtures/tl39/make_api.py (its docstring has the command)."""

__all__ = ["API", "WORDS", "make_tokenizer"]
