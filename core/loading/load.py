"""``HookedTransformer.from_pretrained``: find the files, build the config, stream the weights in.

Steps, each in its own module:

1. :mod:`.resolve` turns the name into a folder or a GGUF file (a GGUF with a converted
   copy in the cache becomes that folder: :mod:`.cache`);
2. the Hugging Face config picks an architecture adapter (:mod:`telelens.core.models`),
   which builds the :class:`HookedTransformerConfig`;
3. the tokenizer is loaded (before the weights, so its temporary memory is gone when the
   weights arrive);
4. :mod:`.weights` builds the model on the meta device, gives it storage on its target
   devices and copies the checkpoint (:mod:`.checkpoint`, :mod:`.gguf_file`) in tensor by
   tensor;
5. TransformerLens's weight processing runs if any of its flags is on.
"""

from __future__ import annotations

import copy
import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from telelens.core.config import HookedTransformerConfig
from telelens.core.loading import cache as gguf_cache
from telelens.core.loading.checkpoint import Checkpoint, StateDictCheckpoint, open_folder
from telelens.core.loading.gguf_file import GGUFCheckpoint, load_gguf_config, load_gguf_tokenizer
from telelens.core.loading.resolve import ResolvedModel, UnknownModelError, resolve_model
from telelens.core.loading.tokenizer import ensure_bos, load_folder_tokenizer, tokenizer_prepends_bos
from telelens.core.loading.weights import fill, init_buffers, materialize
from telelens.core.models.registry import ArchitectureAdapter, architecture_name, get_adapter

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

logger = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}
# Extra keyword arguments understood here (the rest of TransformerLens's pass-through kwargs are ignored).
_HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only")
_PROGRESS_BYTES = 256 << 20  # show a progress bar for checkpoints at least this big


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``torch.float32`` or one of "float32"/"fp32", "bfloat16"/"bf16", "float16"/"fp16"/"half", "float64"."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).removeprefix("torch.").lower()
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or a torch.dtype")
    return _DTYPES[key]


def default_device() -> str:
    """TransformerLens's default: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class _Source:
    """What the weights come from, and how to read them."""

    hf_config: Any
    name: str  # cfg.model_name
    official_name: str  # cfg.tokenizer_name
    open: Callable[[ArchitectureAdapter, HookedTransformerConfig], Checkpoint]
    load_tokenizer: Callable[[], Any]
    gguf_path: Path | None = None  # set when converting a GGUF (a cache is being built)
    cache: gguf_cache.CacheBuilder | None = None


def _folder_source(folder: Path, name: str, official: str) -> _Source:
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(str(folder))
    return _Source(
        hf_config, name, official, lambda a, c: open_folder(folder), lambda: load_folder_tokenizer(folder)
    )


def _gguf_source(resolved: ResolvedModel) -> _Source:
    path = resolved.path
    cached = gguf_cache.cached_folder(path)
    if cached is not None:
        logger.info("telelens: loading %s from its converted copy %s", path.name, cached)
        return _folder_source(cached, resolved.short_name, resolved.official_name)
    logger.info("telelens: converting %s (first load; a converted copy is cached for next time)", path.name)
    hf_config = load_gguf_config(path)

    def open_gguf(adapter: ArchitectureAdapter, full_cfg: HookedTransformerConfig) -> Checkpoint:
        source.cache = gguf_cache.CacheBuilder(path)
        return GGUFCheckpoint(path, hf_config, adapter.hf_names(full_cfg), full_cfg.n_layers, source.cache)

    source = _Source(
        hf_config,
        resolved.short_name,
        resolved.official_name,
        open_gguf,
        lambda: load_gguf_tokenizer(path),
        gguf_path=path,
    )
    return source


def _hf_model_source(hf_model: Any, model_name: str, hub: dict[str, Any]) -> _Source:
    def tokenizer() -> Any:
        # The tokenizer comes from wherever the name resolves offline; there may be none.
        for candidate in (model_name, getattr(hf_model.config, "_name_or_path", None)):
            if not candidate:
                continue
            try:
                resolved = resolve_model(candidate, **{**hub, "local_files_only": True})
            except UnknownModelError:
                continue
            if resolved.kind == "gguf":
                return load_gguf_tokenizer(resolved.path)
            return load_folder_tokenizer(resolved.path)
        logger.warning("telelens: no tokenizer found for %r; pass tokenizer= to set one", model_name)
        return None

    return _Source(
        hf_model.config,
        str(model_name).split("/")[-1],
        str(model_name),
        lambda a, c: StateDictCheckpoint(hf_model.state_dict()),
        tokenizer,
    )


def _make_config(
    adapter: ArchitectureAdapter,
    source: _Source,
    *,
    dtype: torch.dtype,
    device: str | torch.device | None,
    n_devices: int,
    device_map: Sequence[str] | None,
    first_n_layers: int | None,
    default_prepend_bos: bool | None,
) -> tuple[HookedTransformerConfig, HookedTransformerConfig]:
    """(config of the model to build, config of the whole checkpoint)."""
    full = adapter.make_config(source.hf_config)
    full.original_architecture = architecture_name(source.hf_config) or adapter.architectures[0]
    full.model_name = source.name
    full.tokenizer_name = source.official_name
    full.dtype = dtype
    full.device = str(device) if device is not None else default_device()
    full.n_devices = n_devices
    full.device_map = list(device_map) if device_map is not None else None
    full.default_prepend_bos = True if default_prepend_bos is None else default_prepend_bos
    cfg = copy.deepcopy(full)
    if first_n_layers is not None:
        if not 0 < first_n_layers <= full.n_layers:
            raise ValueError(f"first_n_layers={first_n_layers} must be in 1..{full.n_layers}")
        cfg.n_layers = first_n_layers
    return cfg, full


def load_pretrained(
    cls: type[HookedTransformer],
    model_name: str,
    *,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool | None = None,
    fold_value_biases: bool = True,
    refactor_factored_attn_matrices: bool = False,
    hf_model: Any = None,
    device: str | torch.device | None = None,
    n_devices: int = 1,
    device_map: Sequence[str] | None = None,
    tokenizer: Any = None,
    move_to_device: bool = True,
    default_prepend_bos: bool | None = None,
    default_padding_side: str = "right",
    dtype: str | torch.dtype = torch.float32,
    first_n_layers: int | None = None,
    **kwargs: Any,
) -> HookedTransformer:
    """Build a ``cls`` (a :class:`HookedTransformer`) with pretrained weights.

    ``model_name`` is a local Hugging Face folder, a ``.gguf`` file, a hub name or a
    TransformerLens alias (see :func:`telelens.core.loading.resolve.resolve_model`); with
    ``hf_model`` the weights and config come from that already-loaded Hugging Face model.
    Peak memory stays near one copy of the weights: nothing is built twice. Extra
    keyword arguments understood: ``revision``, ``cache_dir``, ``token``,
    ``local_files_only`` (hub look-ups) and ``torch_dtype`` (an alias of ``dtype``).
    """
    started = time.perf_counter()
    if "torch_dtype" in kwargs:
        dtype = kwargs.pop("torch_dtype")
    hub = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
    if kwargs:
        logger.warning("telelens: from_pretrained ignores %s", sorted(kwargs))
    dtype = parse_dtype(dtype)

    if hf_model is not None:
        source = _hf_model_source(hf_model, model_name, hub)
    else:
        resolved = resolve_model(model_name, **hub)
        if resolved.kind == "gguf":
            source = _gguf_source(resolved)
        else:
            source = _folder_source(resolved.path, resolved.short_name, resolved.official_name)

    adapter = get_adapter(source.hf_config)
    cfg, full_cfg = _make_config(
        adapter,
        source,
        dtype=dtype,
        device=device,
        n_devices=n_devices,
        device_map=device_map,
        first_n_layers=first_n_layers,
        default_prepend_bos=default_prepend_bos,
    )

    # Tokenizer before weights: its parsing garbage is freed before the weights take memory.
    own_tokenizer = None
    if tokenizer is None or source.gguf_path is not None:  # a GGUF's cache wants its tokenizer too
        try:
            own_tokenizer = source.load_tokenizer()
        except Exception as e:  # the weights are still usable with token ids
            logger.warning(
                "telelens: could not load the tokenizer (%s: %s); pass tokenizer=", type(e).__name__, e
            )
        if own_tokenizer is not None:
            ensure_bos(own_tokenizer)
    tok = tokenizer if tokenizer is not None else own_tokenizer
    if tok is not None:
        cfg.tokenizer_prepends_bos = tokenizer_prepends_bos(tok)
    gc.collect()

    with torch.device("meta"):
        model = cls(cfg, move_to_device=False, default_padding_side=default_padding_side, init_weights=False)  # type: ignore[arg-type]
    materialize(model, move_to_device)
    try:
        with source.open(adapter, full_cfg) as checkpoint:
            fill(model, checkpoint, adapter, progress=checkpoint.total_bytes >= _PROGRESS_BYTES)
    except BaseException:
        if source.cache is not None:
            source.cache.abort()
        raise
    init_buffers(model, adapter, source.hf_config)
    if source.cache is not None:
        source.cache.commit(source.hf_config, own_tokenizer)
    if move_to_device:
        model.move_model_modules_to_device()  # placement already matches: a check, not a copy
    if tok is not None:
        model.set_tokenizer(tok, default_padding_side=default_padding_side)  # type: ignore[arg-type]

    from telelens.core.weight_fold_ln import folds_final_norm

    if center_unembed is None:  # fold_ln unties tied embeddings (as TransformerLens's W_U is its own)
        center_unembed = not cfg.tie_word_embeddings or bool(fold_ln and folds_final_norm(model))
        if not center_unembed:
            logger.info("telelens: center_unembed=False because %s ties its embeddings", cfg.model_name)
    flags = {
        "fold_ln": fold_ln,
        "center_writing_weights": center_writing_weights,
        "center_unembed": center_unembed,
        "fold_value_biases": fold_value_biases,
        "refactor_factored_attn_matrices": refactor_factored_attn_matrices,
    }
    if any(flags.values()):
        model.process_weights_(**flags)
    logger.info(
        "Loaded pretrained model %s into %s in %.1f s",
        cfg.model_name,
        cls.__name__,
        time.perf_counter() - started,
    )
    return model
