"""Refusing a server-supplied tokenizer whose regexes could hang ``to_tokens``.

``tokenizer.json`` may carry regular expressions (a ``Split`` pre-tokenizer, a ``Replace``
normalizer) that ``tokenizers`` runs with a backtracking engine: a pattern such as ``(a+)+$``
takes exponential time on a few dozen characters, and the Rust call cannot be interrupted. So a
server's tokenizer is accepted only if each of its regexes is one of the standard Hugging Face
pre-tokenizer patterns below (the built-in ``ByteLevel``, ``Whitespace``, ``Metaspace``, ...
pre-tokenizers carry no pattern and are always fine). ``connect(trust_tokenizer=True)`` skips the
check for a server one trusts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from telelens.client.errors import ProtocolError

STANDARD_PATTERNS = frozenset(
    {
        # GPT-2's pattern, spelled out (ByteLevel's built-in one, as some tokenizer.json files write it)
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
        # cl100k / Llama 3 / SmolLM3
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        # Qwen 2 / 2.5 / 3
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        # o200k (GPT-4o style, e.g. Phi-4)
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        # digit splitting (DeepSeek, Falcon-style) and simple separators
        r"\p{N}{1,3}",
        r"\p{N}",
        r"\d{1,3}(?=(?:\d{3})*\b)",
        r"\s+",
        r" ",
    }
)
"""Regexes a server's tokenizer may use without ``trust_tokenizer=True`` (exact pattern strings)."""


def tokenizer_regexes(spec: Any) -> Iterator[str]:
    """Every ``{"Regex": pattern}`` anywhere in a parsed ``tokenizer.json``."""
    if isinstance(spec, dict):
        pattern = spec.get("Regex")
        if pattern is not None:
            yield pattern if isinstance(pattern, str) else repr(pattern)
        for key, value in spec.items():
            if key != "Regex":
                yield from tokenizer_regexes(value)
    elif isinstance(spec, list):
        for value in spec:
            yield from tokenizer_regexes(value)


def check_tokenizer_regexes(spec: Any) -> None:
    """Raise ``ProtocolError`` naming each regex of ``spec`` that is not a standard pattern."""
    unknown = sorted({p for p in tokenizer_regexes(spec) if p not in STANDARD_PATTERNS})
    if unknown:
        shown = ", ".join(repr(p[:200]) for p in unknown)
        raise ProtocolError(
            f"the server's tokenizer uses regular expression(s) that are not standard Hugging Face "
            f"pre-tokenizer patterns and could make tokenization hang: {shown}; pass "
            "connect(trust_tokenizer=True) if you trust this server"
        )
