"""The server model's tokenizer, rebuilt locally from ``tokenizer.json`` with ``tokenizers``.

The server sends its tokenizer's JSON (the Hugging Face ``tokenizers`` format) and the
special-token facts (``tokenizer_config_json``: bos/eos/pad tokens and ids, padding side,
``clean_up_tokenization_spaces``). :class:`RemoteTokenizer` offers the slice of a Hugging
Face tokenizer that telelens uses (``encode``, ``decode``, the special token ids), with the
same results as ``transformers``' fast tokenizer, without importing ``transformers``.

:func:`encode_batch` is the model's ``_encode``: encode without special tokens, prepend BOS
by id, truncate to ``n_ctx``, pad per side with the pad id; the core does exactly this.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from telelens.client.tokenizer_guard import check_tokenizer_regexes

if TYPE_CHECKING:
    pass

_SPECIAL = ("bos", "eos", "pad", "unk")


def _token_text(value: Any) -> str | None:
    """A special token as a string: tokenizer_config.json may hold ``{"content": ...}`` dicts."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def clean_up_tokenization(text: str) -> str:
    """``transformers``' ``clean_up_tokenization`` (spaces before punctuation and contractions)."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


class RemoteTokenizer:
    """A Hugging Face-like tokenizer over ``tokenizers.Tokenizer`` (no ``transformers`` needed).

    ``bos_token_id``/``eos_token_id``/``pad_token_id`` are the server model's effective ids
    (a model without a pad token pads with EOS, as telelens's core does).
    """

    def __init__(
        self, tokenizer_json: str, config: dict[str, Any] | None = None, *, trust: bool = False
    ) -> None:
        """``trust=False`` refuses (``ProtocolError``) regexes that are not standard Hugging Face
        patterns: a backtracking one could hang every ``encode`` (``client.tokenizer_guard``)."""
        from tokenizers import Tokenizer

        if not trust:
            check_tokenizer_regexes(json.loads(tokenizer_json))
        self._tok = Tokenizer.from_str(tokenizer_json)
        # transformers encodes with the backend's own padding/truncation switched off and
        # special tokens in the text recognised as such; so do we.
        self._tok.no_padding()
        self._tok.no_truncation()
        if hasattr(self._tok, "encode_special_tokens"):
            self._tok.encode_special_tokens = bool((config or {}).get("split_special_tokens", False))
        config = dict(config or {})
        self.config = config
        for kind in _SPECIAL:
            token = _token_text(config.get(f"{kind}_token"))
            token_id = config.get(f"{kind}_token_id")
            if token_id is None and token is not None:
                token_id = self._tok.token_to_id(token)
            if token is None and isinstance(token_id, int):
                token = self._tok.id_to_token(token_id)
            setattr(self, f"{kind}_token", token)
            setattr(self, f"{kind}_token_id", token_id if isinstance(token_id, int) else None)
        if self.pad_token_id is None:  # the core borrows EOS (else BOS) as pad
            self.pad_token, self.pad_token_id = (
                (self.eos_token, self.eos_token_id)
                if self.eos_token_id is not None
                else (self.bos_token, self.bos_token_id)
            )
        self.padding_side: str = config.get("padding_side") or config.get("default_padding_side") or "right"
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self._clean_bpe = bool(
            config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)
        )

    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    unk_token: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    unk_token_id: int | None

    @classmethod
    def from_model_info(
        cls, tokenizer_json: str, tokenizer_config_json: str, *, trust: bool = False
    ) -> RemoteTokenizer | None:
        """None when the server model has no tokenizer (empty JSON)."""
        if not tokenizer_json:
            return None
        config = json.loads(tokenizer_config_json) if tokenizer_config_json else {}
        return cls(tokenizer_json, config, trust=trust)

    @property
    def backend_tokenizer(self) -> Any:
        """The ``tokenizers.Tokenizer`` (as on a Hugging Face fast tokenizer)."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one text (the backend's post-processor adds specials if asked)."""
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [
            list(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        ]

    def decode(self, ids: int | Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids, as ``transformers`` decodes it (cleanup included where it applies)."""
        if isinstance(ids, int):
            ids = [ids]
        text = self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces and (
            type(self._tok.model).__name__ != "BPE" or self._clean_bpe
        ):  # transformers skips the cleanup for BPE models: it would corrupt their output
            text = clean_up_tokenization(text)
        return text

    def batch_decode(
        self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = False
    ) -> list[str]:
        return [self.decode(s, skip_special_tokens) for s in sequences]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str | None] | None:
        if isinstance(ids, int):
            return self._tok.id_to_token(ids)
        return [self._tok.id_to_token(i) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int | None] | None:
        if isinstance(tokens, str):
            return self._tok.token_to_id(tokens)
        return [self._tok.token_to_id(t) for t in tokens]

    def __repr__(self) -> str:
        return (
            f"<RemoteTokenizer vocab={len(self)} bos={self.bos_token!r} eos={self.eos_token!r} "
            f"pad={self.pad_token!r}>"
        )
