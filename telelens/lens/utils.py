"""Small TransformerLens-compatible helpers (``transformer_lens.utils`` names and semantics).

Sections here: tensors, devices, activation names, slices, exploration. By topic elsewhere,
re-exported here so ``telelens.utils`` has every public name of TransformerLens 3.9's
``utils``: weight initialisation (:mod:`.utils_init`), losses/activations/sampling
(:mod:`.utils_lm`), tokenizers and datasets (:mod:`.utils_tokens`). Torch + numpy only.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any, Literal, TypeAlias

import numpy as np
import torch

from telelens.lens import utils_init, utils_lm, utils_tokens
from telelens.lens.utils_init import *  # noqa: F403
from telelens.lens.utils_lm import *  # noqa: F403
from telelens.lens.utils_tokens import *  # noqa: F403

__all__ = [
    *utils_init.__all__,
    *utils_lm.__all__,
    *utils_tokens.__all__,
    "Slice",
    "SliceInput",
    "as_slice",
    "get_act_name",
    "get_corner",
    "get_device",
    "get_nested_attr",
    "is_lower_triangular",
    "is_square",
    "remove_batch_dim",
    "set_nested_attr",
    "to_numpy",
    "transpose",
    "warn_if_mps",
]


# ---------------------------------------------------------------------------------------- tensors
def to_numpy(tensor: Any) -> np.ndarray:
    """A tensor, list, tuple, array or Python scalar as a numpy array (bfloat16 goes via float32)."""
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, (list, tuple)):
        return np.array(tensor)
    if isinstance(tensor, torch.Tensor):
        t = tensor.detach().cpu()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    if isinstance(tensor, (int, float, bool, str)):
        return np.array(tensor)
    raise ValueError(f"Input to to_numpy has invalid type: {type(tensor)}")


def remove_batch_dim(tensor: torch.Tensor) -> torch.Tensor:
    """Drop a leading dimension of size 1; other tensors come back unchanged."""
    return tensor.squeeze(0) if tensor.shape[0] == 1 else tensor


def get_corner(tensor: torch.Tensor, n: int = 3) -> torch.Tensor:
    """The top-left ``n x n x ...`` corner of a tensor (for eyeballing)."""
    return tensor[tuple(slice(n) for _ in range(tensor.ndim))]


def transpose(tensor: torch.Tensor) -> torch.Tensor:
    """Swap the last two dimensions."""
    return tensor.transpose(-1, -2)


def is_square(x: torch.Tensor) -> bool:
    """True for a 2-D square matrix."""
    return x.ndim == 2 and x.shape[0] == x.shape[1]


def is_lower_triangular(x: torch.Tensor) -> bool:
    """True for a square matrix equal to its lower triangle."""
    return is_square(x) and x.equal(x.tril())


def get_nested_attr(obj: Any, attr_str: str) -> Any:
    """``get_nested_attr(model, "blocks.0.attn")`` -> ``model.blocks[0].attn``."""
    for attr in attr_str.split("."):
        obj = getattr(obj, attr)
    return obj


def set_nested_attr(obj: Any, attr_str: str, value: Any) -> None:
    """Set the attribute a dotted path names."""
    *path, last = attr_str.split(".")
    setattr(get_nested_attr(obj, ".".join(path)) if path else obj, last, value)


# ---------------------------------------------------------------------------------------- devices
_mps_warned = False


def get_device() -> str:
    """The best available device: cuda, else mps when ``TRANSFORMERLENS_ALLOW_MPS=1``, else cpu."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available() and os.environ.get("TRANSFORMERLENS_ALLOW_MPS", "") == "1":
        return "mps"
    return "cpu"


def warn_if_mps(device: str | torch.device) -> None:
    """Warn once when moving to MPS without ``TRANSFORMERLENS_ALLOW_MPS=1`` (its kernels are unreliable)."""
    global _mps_warned
    name = device.type if isinstance(device, torch.device) else device
    if name == "mps" and not _mps_warned and os.environ.get("TRANSFORMERLENS_ALLOW_MPS", "") != "1":
        _mps_warned = True
        warnings.warn(
            "MPS can give silently wrong results for some operations; set TRANSFORMERLENS_ALLOW_MPS=1 "
            "to silence this warning",
            UserWarning,
            stacklevel=2,
        )


# ------------------------------------------------------------------------------- activation names
_LAYER_TYPE_ALIAS = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
_ACT_NAME_ALIAS = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_ATTN_NAMES = ("k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores")
_MLP_NAMES = ("pre", "post", "mid", "pre_linear")
_NORM_NAMES = ("scale", "normalized")


def get_act_name(name: str, layer: int | str | None = None, layer_type: str | None = None) -> str:
    """Shorthand -> full hook name, exactly as TransformerLens's ``utils.get_act_name``.

    A full name (with a dot, or starting ``hook_``) and no layer comes back as is. A name
    with digits is split as ``name layer layer_type``: ``"k6"`` -> ``blocks.6.attn.hook_k``,
    ``"scale4ln1"`` -> ``blocks.4.ln1.hook_scale``. Examples::

        get_act_name("pattern", 3)            == "blocks.3.attn.hook_pattern"
        get_act_name("pre", 2)                == "blocks.2.mlp.hook_pre"
        get_act_name("embed")                 == "hook_embed"
        get_act_name("normalized", 27, "ln2") == "blocks.27.ln2.hook_normalized"
        get_act_name("scale")                 == "ln_final.hook_scale"

    Only deviation: ``layer_type="ln_final"`` with no layer gives ``ln_final.hook_scale``
    (TransformerLens doubles the prefix into a name that never exists).
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    match = re.match(r"([a-z]+)(\d+)([a-z]?.*)", name)
    if match is not None:
        name, layer, layer_type = match.groups()
    name = _ACT_NAME_ALIAS.get(name, name)

    if name in _ATTN_NAMES:
        layer_type = "attn"
    elif name in _MLP_NAMES:
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPE_ALIAS:
        layer_type = _LAYER_TYPE_ALIAS[layer_type]

    full = f"blocks.{layer}." if layer is not None else ""
    if layer_type:
        full += f"{layer_type}."
    full += f"hook_{name}"
    if name in _NORM_NAMES and layer is None and not full.startswith("ln_final."):
        full = f"ln_final.{full}"
    return full


# ------------------------------------------------------------------------------------------ slices
SliceInput: TypeAlias = int | tuple[int, ...] | list[int] | torch.Tensor | np.ndarray | slice | None
"""What :class:`Slice` accepts: int, ``(stop,)``/``(start, stop[, step])``, indices, a slice, or None."""


class Slice:
    """TransformerLens's ``Slice``: index one dimension of a tensor, possibly dropping it.

    Modes: ``int`` (``x[i]``, the dimension goes away), ``slice`` (a tuple is
    ``slice(*tuple)``, so ``(1, 5)`` is ``1:5`` and ``(3,)`` is ``:3``), ``array`` (a list,
    tensor or numpy array of indices or a boolean mask) and ``identity`` (None: unchanged).
    """

    slice: int | slice | np.ndarray
    mode: Literal["int", "slice", "array", "identity"]

    def __init__(self, input_slice: SliceInput = None) -> None:
        if isinstance(input_slice, tuple):
            self.slice, self.mode = slice(*input_slice), "slice"
        elif isinstance(input_slice, int):
            self.slice, self.mode = input_slice, "int"
        elif isinstance(input_slice, slice):
            self.slice, self.mode = input_slice, "slice"
        elif isinstance(input_slice, (list, torch.Tensor, np.ndarray)):
            self.slice, self.mode = to_numpy(input_slice), "array"
        elif input_slice is None:
            self.slice, self.mode = slice(None), "identity"
        else:
            raise ValueError(f"Invalid input_slice {input_slice}")

    def apply(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """``tensor`` sliced along ``dim`` (negative dims count from the end)."""
        if self.mode == "identity":
            return tensor
        index: list[Any] = [slice(None)] * tensor.ndim
        index[dim] = torch.as_tensor(self.slice, device=tensor.device) if self.mode == "array" else self.slice
        return tensor[tuple(index)]

    def indices(self, max_ctx: int | None = None) -> np.ndarray:
        """The indices this slice picks from an axis of length ``max_ctx`` (an int gives ``[i]``)."""
        if self.mode == "int":
            return np.array([self.slice], dtype=np.int64)
        if max_ctx is None:
            raise ValueError("max_ctx must be specified if slice is not an integer")
        return np.arange(max_ctx, dtype=np.int64)[self.slice]

    @classmethod
    def unwrap(cls, slice_input: Slice | SliceInput) -> Slice:
        """A Slice from slice-like input; an int becomes ``[int]`` so the dimension is kept."""
        if isinstance(slice_input, Slice):
            return slice_input
        if isinstance(slice_input, int):
            slice_input = [slice_input]
        return cls(slice_input)

    def __repr__(self) -> str:
        return f"Slice: {self.slice} Mode: {self.mode} "


def as_slice(s: Slice | SliceInput) -> Slice:
    """``s`` as a :class:`Slice` (an int stays an int, dropping the dimension, as in TransformerLens)."""
    return s if isinstance(s, Slice) else Slice(s)


# ------------------------------------------------------------------------------------ exploration
def test_prompt(
    prompt: str,
    answer: str | list[str],
    model: Any,
    prepend_space_to_answer: bool = True,
    print_details: bool = True,
    prepend_bos: bool | None = None,
    top_k: int = 10,
) -> None:
    """Print how well ``model`` predicts ``answer`` after ``prompt`` (TransformerLens's ``test_prompt``).

    Prints the tokenized prompt and answer, then for each answer token its rank, logit and
    probability and the ``top_k`` most likely tokens, and finally the answer tokens' ranks.
    A list of answers compares their first tokens as alternative next tokens. Returns None.

    Args:
        prompt: The prompt, e.g. ``"Why did the elephant cross the"``.
        answer: The answer (``"road"``), or a list of candidate answers.
        model: A HookedTransformer with a tokenizer.
        prepend_space_to_answer: Prefix a space unless the answer already starts with one.
        print_details: Print the tokenization and the per-token details (the ranks always print).
        prepend_bos: Overrides ``model.cfg.default_prepend_bos`` for the prompt.
        top_k: How many of the most likely tokens to list per answer position.
    """
    from rich import print as rprint
    from rich.markup import escape

    answers = [answer] if isinstance(answer, str) else list(answer)
    n_answers = len(answers)
    multiple = n_answers > 1
    if prepend_space_to_answer:
        answers = [a if a.startswith(" ") else " " + a for a in answers]
    prompt_tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)  # [1, prompt_pos]
    answer_tokens = model.to_tokens(answers, prepend_bos=False)  # [n_answers, answer_pos]
    if multiple:  # alternatives: only the next token can be compared
        answer_tokens = answer_tokens[:, :1]
    tokens = torch.cat((prompt_tokens.expand(n_answers, -1), answer_tokens.to(prompt_tokens.device)), dim=1)
    prompt_str_tokens = model.to_str_tokens(prompt, prepend_bos=prepend_bos)
    answer_str_tokens = [model.to_str_tokens(a, prepend_bos=False) for a in answers]
    prompt_len = prompt_tokens.shape[1]
    answer_len = 1 if multiple else len(answer_str_tokens[0])

    if print_details:
        print("Tokenized prompt:", prompt_str_tokens)
        if multiple:
            print("Tokenized answers:", answer_str_tokens)
        else:
            print("Tokenized answer:", answer_str_tokens[0])
    with torch.inference_mode():
        logits = model(tokens).float()  # [n_answers, pos, d_vocab_out]
    probs = logits.softmax(dim=-1)

    answer_ranks: list[list[tuple[str, int]]] = []
    rows = torch.arange(n_answers)
    for index in range(prompt_len, prompt_len + answer_len):
        target = tokens[:, index].cpu()  # [n_answers]
        strs = [a[index - prompt_len] for a in answer_str_tokens]
        token_probs = probs[:, index - 1].cpu()  # the prediction for position `index`
        sorted_probs, sorted_ids = token_probs.sort(dim=-1, descending=True)
        ranks = sorted_ids.argsort(dim=-1)[rows, target].tolist()
        answer_ranks.append(list(zip(strs, ranks)))
        if print_details:
            rprint(
                f"Performance on answer token{'s' if multiple else ''}:\n"
                + "\n".join(
                    f"[b]Rank: {ranks[i]: <8} Logit: {logits[i, index - 1, target[i]].item():5.2f} "
                    f"Prob: {token_probs[i, target[i]].item():6.2%} Token: |{escape(strs[i])}|[/b]"
                    for i in range(n_answers)
                )
            )
            for i in range(min(top_k, sorted_ids.shape[-1])):
                tok = int(sorted_ids[0, i])
                print(
                    f"Top {i}th token. Logit: {logits[0, index - 1, tok].item():5.2f} "
                    f"Prob: {sorted_probs[0, i].item():6.2%} Token: |{model.to_string(torch.tensor(tok))}|"
                )
    summary = [r[0] for r in answer_ranks] if not multiple else answer_ranks
    rprint(f"[b]Ranks of the answer tokens:[/b] {escape(str(summary))}")


test_prompt.__test__ = False  # type: ignore[attr-defined]  # a helper, not a pytest test
