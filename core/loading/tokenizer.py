"""Tokenizer loading and the BOS facts the model needs.

telelens tokenizes with ``add_special_tokens=False`` and prepends BOS by id itself; the
loader records whether the tokenizer would have added BOS on its own
(``cfg.tokenizer_prepends_bos``), as TransformerLens does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "spiece.model",
)


def load_folder_tokenizer(folder: Path) -> Any | None:
    """``AutoTokenizer`` from a model folder, or None (logged) when the folder ships none."""
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        logger.info("telelens: %s has no tokenizer files; the model has no tokenizer", folder)
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def tokenizer_prepends_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer.encode(text)`` (special tokens on) starts with a BOS it added itself."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    with_special = tokenizer.encode("a", add_special_tokens=True)
    without = tokenizer.encode("a", add_special_tokens=False)
    return len(with_special) > len(without) and with_special[0] == bos


def ensure_bos(tokenizer: Any) -> None:
    """Give a tokenizer without a BOS token its EOS as BOS, as TransformerLens does (e.g. Qwen2)."""
    if getattr(tokenizer, "bos_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        logger.info(
            "telelens: the tokenizer has no BOS token; using its EOS token %r as BOS", tokenizer.eos_token
        )
        tokenizer.bos_token = tokenizer.eos_token
