"""Tokenizer and dataset helpers of ``transformer_lens.utils`` (same names, arguments and numbers).

The tokenizer is any Hugging Face-style tokenizer object, used by duck typing: this
module never imports ``transformers``. ``datasets`` is optional: ``tokenize_and_concatenate``
takes a ``datasets.Dataset`` as TransformerLens does, or a plain list of texts.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any, ClassVar

import numpy as np
import torch

from telelens.lens.utils_lm import get_cumsum_along_dim

__all__ = [
    "USE_DEFAULT_VALUE",
    "LocallyOverridenDefaults",
    "get_attention_mask",
    "get_dataset",
    "get_input_with_manually_prepended_bos",
    "get_tokenizer_with_bos",
    "get_tokens_with_bos_removed",
    "keep_single_column",
    "override_or_use_default_value",
    "tokenize_and_concatenate",
]

USE_DEFAULT_VALUE = None
"""The argument value that means "use the model's default" (``prepend_bos``, ``padding_side``)."""


def override_or_use_default_value(default_flag: Any, override: Any | None = None) -> Any:
    """``override`` unless it is None, else ``default_flag``."""
    return override if override is not None else default_flag


def get_attention_mask(
    tokenizer: Any, tokens: torch.Tensor, prepend_bos: bool, padding_side: str | None = None
) -> torch.Tensor:
    """1 for real tokens, 0 for the padding run at the ``padding_side`` end of each row [batch, pos].

    Only leading (left) or trailing (right) pads count as padding; a BOS that shares the pad
    id stays attended when ``prepend_bos``.
    """
    attention_mask = torch.ones_like(tokens)
    if tokenizer is None:
        return attention_mask
    if padding_side is None:
        padding_side = tokenizer.padding_side
    is_not_pad = tokens.ne(tokenizer.pad_token_id)
    if padding_side == "right":
        attention_mask[get_cumsum_along_dim(is_not_pad, -1, reverse=True) == 0] = 0
    else:
        is_leading_pad = get_cumsum_along_dim(is_not_pad, -1, reverse=False) == 0
        attention_mask[is_leading_pad] = 0
        if prepend_bos and tokenizer.bos_token_id == tokenizer.pad_token_id:
            pad_bos_positions = is_leading_pad.sum(-1) - 1
            attention_mask[torch.arange(attention_mask.shape[0]), pad_bos_positions] = 1
    return attention_mask


def get_tokens_with_bos_removed(
    tokenizer: Any, tokens: torch.Tensor, padding_side: str | None = None
) -> torch.Tensor:
    """``tokens`` [..., pos] without each row's BOS (found after the left padding when padded left)."""
    if tokenizer.bos_token_id is None:
        return tokens
    if padding_side is None:
        padding_side = tokenizer.padding_side
    if padding_side == "right":
        return tokens[..., 1:]
    shape = list(tokens.shape)
    shape[-1] -= 1
    if tokenizer.bos_token_id == tokenizer.pad_token_id:
        is_leading_pad = get_cumsum_along_dim(tokens.ne(tokenizer.pad_token_id), -1, reverse=False) == 0
        bos_positions = is_leading_pad.sum(-1) - 1
    else:
        bos_positions = (tokens == tokenizer.bos_token_id).int().argmax(-1)
    tokens = tokens.scatter(dim=1, index=bos_positions.unsqueeze(-1), value=-100)
    return tokens[tokens != -100].view(*shape)


def get_input_with_manually_prepended_bos(bos_token: str | None, input: str | list[str]) -> str | list[str]:
    """The text(s) with ``bos_token`` prefixed (unchanged when there is no BOS token)."""
    if bos_token is None:
        return input
    if isinstance(input, str):
        return bos_token + input
    return [bos_token + s for s in input]


def get_tokenizer_with_bos(tokenizer: Any) -> Any:
    """The tokenizer reloaded with ``add_bos_token=True`` (itself if it already adds BOS or has none).

    Reloads through the tokenizer's own class (``from_pretrained`` of ``name_or_path``),
    keeping its ``padding_side``; a tokenizer that cannot express it comes back unchanged.
    """
    if tokenizer.bos_token is None:
        return tokenizer
    init_kwargs = deepcopy(tokenizer.init_kwargs)
    name = init_kwargs.pop("name_or_path")
    add_bos_token = init_kwargs.pop("add_bos_token", None)
    if add_bos_token is None:
        add_bos_token = getattr(tokenizer, "add_bos_token", False)
    if add_bos_token:
        return tokenizer
    try:
        with_bos = type(tokenizer).from_pretrained(name, add_bos_token=True, **init_kwargs)
    except ValueError:
        return tokenizer
    with_bos.padding_side = tokenizer.padding_side
    return with_bos


class LocallyOverridenDefaults:
    """Context manager: override ``model.cfg.default_prepend_bos`` (``prepend_bos=``) and
    ``model.tokenizer.padding_side`` (``padding_side=``) inside the block, restored after it.

    ``None`` (``USE_DEFAULT_VALUE``) keeps the default; the padding side is left alone when
    the model has no tokenizer.
    """

    _LOCATIONS: ClassVar[dict[str, tuple[str, str, tuple[Any, ...]]]] = {
        "prepend_bos": ("cfg", "default_prepend_bos", (USE_DEFAULT_VALUE, True, False)),
        "padding_side": ("tokenizer", "padding_side", (USE_DEFAULT_VALUE, "left", "right")),
    }

    def __init__(self, model: Any, **overrides: Any) -> None:
        self.model = model
        self.overrides = overrides
        for override in overrides:
            assert override in self._LOCATIONS, (
                f"{override} is not a valid parameter to override. Valid parameters are {self._LOCATIONS.keys()}."
            )
        self._saved: dict[str, Any] = {}

    def _skip(self, prop: str) -> bool:
        return prop == "padding_side" and self.model.tokenizer is None

    def __enter__(self) -> LocallyOverridenDefaults:
        for prop, override in self.overrides.items():
            if self._skip(prop):
                continue
            owner, attr, valid = self._LOCATIONS[prop]
            assert override in valid, f"{prop} must be one of {list(valid)}, but got {override}."
            target = getattr(self.model, owner)
            self._saved[prop] = deepcopy(getattr(target, attr))
            setattr(target, attr, override_or_use_default_value(self._saved[prop], override))
        return self

    def __exit__(self, *exc: Any) -> None:
        for prop, value in self._saved.items():
            owner, attr, _ = self._LOCATIONS[prop]
            setattr(getattr(self.model, owner), attr, value)
        self._saved = {}


# ---------------------------------------------------------------------------------------- datasets
def keep_single_column(dataset: Any, col_name: str) -> Any:
    """A Hugging Face dataset with every column but ``col_name`` removed."""
    for key in dataset.features:
        if key != col_name:
            dataset = dataset.remove_columns(key)
    return dataset


def _concatenate_and_chunk(
    texts: list[str], tokenizer: Any, seq_len: int, add_bos_token: bool, has_pad: bool
) -> np.ndarray:
    """One ``map`` batch: the texts tokenized, joined by EOS, cut into rows of ``seq_len`` (+ BOS)."""
    assert tokenizer.eos_token is not None, "Tokenizer must have an EOS token."
    if not texts:
        return np.zeros((0, seq_len + add_bos_token), dtype=np.int64)
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    pieces: list[np.ndarray] = []
    for i, row in enumerate(encoded):
        pieces.append(np.asarray(row, dtype=np.int64))
        if i < len(encoded) - 1:
            pieces.append(np.array([tokenizer.eos_token_id], dtype=np.int64))
    tokens = np.concatenate(pieces)
    if len(tokens) < seq_len:  # too short for one row: pad it
        n_rows = 1
        pad_id = tokenizer.pad_token_id if has_pad else tokenizer.eos_token_id
        tokens = np.concatenate([tokens, np.full(seq_len - len(tokens), pad_id, dtype=np.int64)])
    else:  # the tail that does not fill a row is dropped
        n_rows = len(tokens) // seq_len
        tokens = tokens[: seq_len * n_rows]
    rows = tokens.reshape(n_rows, seq_len)  # [batch, seq]
    if add_bos_token:
        rows = np.concatenate([np.full((n_rows, 1), tokenizer.bos_token_id, dtype=np.int64), rows], axis=1)
    return rows


def tokenize_and_concatenate(
    dataset: Any,
    tokenizer: Any,
    streaming: bool = False,
    max_length: int = 1024,
    column_name: str = "text",
    add_bos_token: bool = True,
    num_proc: int | None = 10,
    set_format: bool = True,
) -> Any:
    """Tokenize each document, join them with EOS and cut the stream into rows of ``max_length``.

    As TransformerLens: a ``datasets.Dataset``/``IterableDataset`` comes back as a dataset
    with one column ``"tokens"`` (torch format when ``set_format``), tokenized in ``map``
    batches of 1000 documents. A plain list of texts (no ``datasets`` needed) is processed in
    the same batches and comes back as ``{"tokens": LongTensor [batch, max_length]}``.
    A tokenizer without a pad token gets ``"<PAD>"`` added, as in TransformerLens.
    """
    is_text_list = isinstance(dataset, (list, tuple))
    if not is_text_list:
        dataset = keep_single_column(dataset, column_name)
    has_pad = tokenizer.pad_token is not None
    if not has_pad:
        tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    seq_len = max_length - 1 if add_bos_token else max_length

    if is_text_list:
        batches = [list(dataset[i : i + 1000]) for i in range(0, len(dataset), 1000)]
        rows = [_concatenate_and_chunk(b, tokenizer, seq_len, add_bos_token, has_pad) for b in batches]
        joined = np.concatenate(rows) if rows else np.zeros((0, max_length), dtype=np.int64)
        return {"tokens": torch.from_numpy(joined)}

    def tokenize_function(examples: Any) -> dict[str, np.ndarray]:
        return {
            "tokens": _concatenate_and_chunk(
                examples[column_name], tokenizer, seq_len, add_bos_token, has_pad
            )
        }

    tokenized = dataset.map(
        tokenize_function,
        batched=True,
        remove_columns=[column_name],
        **({"num_proc": num_proc} if not streaming else {}),
    )
    if set_format:
        tokenized.set_format(type="torch", columns=["tokens"])
    return tokenized


def get_dataset(dataset_name: str, **kwargs: Any) -> Any:
    """One of TransformerLens's small (10k-document) Hub datasets by alias (needs ``datasets``)."""
    aliases = {
        "openwebtext": "stas/openwebtext-10k",
        "owt": "stas/openwebtext-10k",
        "pile": "NeelNanda/pile-10k",
        "c4": "NeelNanda/c4-10k",
        "code": "NeelNanda/code-10k",
        "python": "NeelNanda/code-10k",
        "c4_code": "NeelNanda/c4-code-20k",
        "c4-code": "NeelNanda/c4-code-20k",
        "wiki": "NeelNanda/wiki-10k",
    }
    if dataset_name not in aliases:
        raise ValueError(f"Dataset {dataset_name} not supported")
    try:
        from datasets import load_dataset
    except ImportError as e:
        raise ImportError("get_dataset needs the `datasets` package: pip install datasets") from e
    return load_dataset(aliases[dataset_name], split="train", **kwargs)
