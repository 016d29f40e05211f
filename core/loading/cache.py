"""A converted copy of each GGUF file: a plain Hugging Face folder of fp32 safetensors.

De-quantizing a GGUF and parsing its vocabulary takes seconds; reading the same weights
back from fp32 safetensors takes a fraction of one. The first load writes
``$TELELENS_CACHE/gguf/<stem>-<key>/`` (``config.json``, ``model.safetensors`` with
Hugging Face tensor names, tokenizer files, ``telelens_source.json``), keyed by the GGUF
file's absolute path, size and modification time; later loads read that folder.

The folder is built under a temporary name and renamed into place only when complete,
so an interrupted load never leaves a half-written cache behind. Caching is best-effort:
a cache that cannot be written is logged and skipped, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from telelens.core.loading.checkpoint import SafetensorsWriter

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when the cached layout changes: old entries are then simply not found."""
SOURCE_FILE = "telelens_source.json"


def cache_root() -> Path:
    """``$TELELENS_CACHE``, default ``~/.cache/telelens``."""
    return Path(os.environ.get("TELELENS_CACHE") or "~/.cache/telelens").expanduser()


def _source_info(gguf_path: Path) -> dict[str, Any]:
    st = gguf_path.stat()
    return {
        "path": str(gguf_path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "version": CACHE_VERSION,
    }


def gguf_cache_dir(gguf_path: Path) -> Path:
    """Where the converted copy of ``gguf_path`` lives (whether or not it exists yet)."""
    key = hashlib.sha256(json.dumps(_source_info(gguf_path), sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf_path.stem}-{key}"


def cached_folder(gguf_path: Path) -> Path | None:
    """The complete converted copy of ``gguf_path``, or None."""
    folder = gguf_cache_dir(gguf_path)
    source = folder / SOURCE_FILE
    if not source.is_file():
        return None
    try:
        if json.loads(source.read_text()) != _source_info(gguf_path):
            return None
    except (OSError, ValueError):
        return None
    return folder if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file() else None


class CacheBuilder:
    """Collects one GGUF's converted tensors, config and tokenizer, then moves them into place."""

    def __init__(self, gguf_path: Path) -> None:
        self.gguf_path = gguf_path
        self.final = gguf_cache_dir(gguf_path)
        self.tmp = self.final.parent / f".{self.final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.failed = False
        self.writer: SafetensorsWriter | None = None
        try:
            self.tmp.mkdir(parents=True)
            self.writer = SafetensorsWriter(self.tmp / "model.safetensors")
        except OSError as e:
            self._fail(e)

    def _fail(self, e: BaseException) -> None:
        logger.warning("telelens: not caching the converted GGUF (%s: %s)", type(e).__name__, e)
        self.abort()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self.failed or self.writer is None:
            return
        try:
            self.writer.add(name, tensor)
        except OSError as e:
            self._fail(e)

    def commit(self, hf_config: Any, tokenizer: Any) -> Path | None:
        """Finish the folder and move it into place; returns it (None if caching failed)."""
        if self.failed or self.writer is None:
            return None
        try:
            self.writer.finish()
            hf_config.save_pretrained(self.tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(self.tmp)
            # Written last: its presence marks a complete folder.
            (self.tmp / SOURCE_FILE).write_text(json.dumps(_source_info(self.gguf_path), indent=1))
            try:
                os.replace(self.tmp, self.final)
            except OSError:
                if cached_folder(self.gguf_path) is None:  # not a concurrent writer's finished copy
                    raise
                shutil.rmtree(self.tmp, ignore_errors=True)
            logger.info("telelens: cached the converted GGUF in %s", self.final)
            return self.final
        except Exception as e:
            self._fail(e)
            return None

    def abort(self) -> None:
        self.failed = True
        if self.writer is not None:
            with contextlib.suppress(OSError):
                self.writer.abort()
        shutil.rmtree(self.tmp, ignore_errors=True)
