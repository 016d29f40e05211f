"""TransformerLens's tokenization methods, shared by the local and the remote model.

``HookedTransformer`` (a Hugging Face tokenizer) and ``RemoteModel`` (the server's
tokenizer.json through ``tokenizers``) mix in :class:`TokenMethods`, so both tokenize the
same way by construction: text is encoded without special tokens, BOS is prepended by id
(never by string), rows are padded on ``padding_side`` with the pad id. Torch only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

TextInput = str | Sequence[str]


class TokenMethods:
    """``to_tokens``, ``to_string``, ``to_str_tokens``, ``to_single_token``, ``get_token_position``.

    The host class provides ``cfg`` (``default_prepend_bos``, ``default_padding_side``,
    ``n_ctx``), ``tokenizer`` (``encode(text, add_special_tokens=...)``, ``decode(ids)``,
    ``bos_token_id``, ``pad_token_id``) and may override :meth:`_tokens_device`.
    """

    cfg: Any
    tokenizer: Any

    def _tokens_device(self) -> torch.device:
        return torch.device("cpu")

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: pass token ids, or set one with set_tokenizer()")
        return self.tokenizer

    def _encode(
        self, input: TextInput, prepend_bos: bool | None, padding_side: str | None, truncate: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [batch, pos] and attention mask for text."""
        tok = self._require_tokenizer()
        texts = [input] if isinstance(input, str) else list(input)
        prepend = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        side = padding_side or self.cfg.default_padding_side
        ids: list[list[int]] = [tok.encode(t, add_special_tokens=False) for t in texts]
        if prepend:  # encoded without special tokens above, so BOS is ours to add
            if tok.bos_token_id is None:
                raise ValueError("prepend_bos=True but the tokenizer has no BOS token")
            ids = [[tok.bos_token_id, *x] for x in ids]
        if truncate:
            ids = [x[: self.cfg.n_ctx] for x in ids]
        width = max(len(x) for x in ids)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        tokens = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):
            sl = slice(width - len(x), width) if side == "left" else slice(0, len(x))
            tokens[i, sl] = torch.tensor(x, dtype=torch.long)
            mask[i, sl] = 1
        return tokens, mask

    def to_tokens(
        self,
        input: TextInput,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> torch.Tensor:
        """Text (or a list of texts, padded) -> token ids [batch, pos]."""
        tokens, _ = self._encode(input, prepend_bos, padding_side, truncate)
        return tokens.to(self._tokens_device()) if move_to_device else tokens

    def to_string(self, tokens: torch.Tensor | Sequence[int] | int) -> str | list[str]:
        """Token ids -> text; a batch [batch, pos] gives a list of texts."""
        tok = self._require_tokenizer()
        t = torch.as_tensor(tokens)
        if t.dim() == 2:
            return [tok.decode(row.tolist()) for row in t]
        if t.dim() == 0:
            t = t[None]
        return tok.decode(t.tolist())

    def to_str_tokens(
        self,
        input: str | torch.Tensor | Sequence[Any],
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
    ) -> list[str] | list[list[str]]:
        """Each token as its own string; a list of texts gives a list of lists."""
        tok = self._require_tokenizer()
        if isinstance(input, (list, tuple)) and input and isinstance(input[0], str):
            return [self.to_str_tokens(s, prepend_bos, padding_side) for s in input]  # type: ignore[misc,return-value]
        if isinstance(input, str):
            ids = self._encode(input, prepend_bos, padding_side)[0][0].tolist()
        else:
            t = torch.as_tensor(input)
            if t.dim() == 2:
                if t.shape[0] != 1:
                    raise ValueError(f"to_str_tokens takes one sequence, got a batch of {t.shape[0]}")
                t = t[0]
            ids = t.reshape(-1).tolist()
        return [tok.decode([i]) for i in ids]

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (else a clear error)."""
        ids = self._encode(string, prepend_bos=False, padding_side=None)[0][0]
        if ids.numel() != 1:
            raise ValueError(f"{string!r} is {ids.numel()} tokens, not one: {self.to_str_tokens(ids)}")
        return int(ids.item())

    def to_single_str_token(self, int_token: int) -> str:
        """The string of one token id."""
        return self.to_str_tokens(torch.tensor([int_token]))[0]  # type: ignore[return-value]

    def get_token_position(
        self,
        single_token: str | int,
        input: str | torch.Tensor,
        mode: Literal["first", "last"] = "first",
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
    ) -> int:
        """Position of ``single_token`` in ``input`` (first or last occurrence)."""
        tokens = (
            self.to_tokens(input, prepend_bos, padding_side)
            if isinstance(input, str)
            else torch.as_tensor(input)
        )
        if tokens.dim() == 2:
            if tokens.shape[0] != 1:
                raise ValueError("get_token_position takes one sequence")
            tokens = tokens[0]
        tid = self.to_single_token(single_token) if isinstance(single_token, str) else int(single_token)
        hits = (tokens == tid).nonzero().flatten()
        if hits.numel() == 0:
            raise ValueError(f"token {single_token!r} (id {tid}) is not in the input")
        return int(hits[0] if mode == "first" else hits[-1])
