"""Typed server configuration: dataclasses with a default and a docstring on every field.

Load with :func:`load_config` (YAML or JSON) or build with :meth:`ServeConfig.for_model`.
Loading checks every field (unknown keys with suggestions, types, ranges, files) and
raises one :class:`ConfigError` naming each offending field, e.g. ``models[0].replicas``.
Byte sizes accept ints or strings with units (``"256 MiB"``, ``"1GB"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from telelens.protos import ir
from telelens.server._private.config_parsing import (
    build,
    config_to_dict,
    describe,
    field_docs,
    field_types,
    parse_bytes,
)

__all__ = [
    "ConfigError",
    "LimitsConfig",
    "ModelConfig",
    "ServeConfig",
    "TLSConfig",
    "config_from_dict",
    "config_to_dict",
    "default_model_name",
    "describe",
    "load_config",
    "parse_bytes",
]

DTYPES = ("float32", "float16", "bfloat16")
MAX_GRPC_MESSAGE = (1 << 31) - 1
"""gRPC's message size limit is a signed 32-bit int."""
CHUNK_OVERHEAD = 1024
"""Room for the name and offset fields beside a chunk's data in one message."""


class ConfigError(ValueError):
    """A configuration was refused; ``problems`` lists ``(field path, reason)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.problems = problems
        where = f" in {source}" if source else ""
        lines = "\n  ".join(f"{path or '<root>'}: {reason}" for path, reason in problems)
        super().__init__(f"invalid server configuration{where} ({len(problems)} problem(s)):\n  {lines}")


@dataclass
class LimitsConfig:
    """Ceilings for one request, written flat under ``limits:``; API keys may override any of them.

    The graph's ceilings are an :class:`telelens.protos.ir.Limits` (its fields, defaults and
    docstrings: ``max_nodes``, ``max_tokens``, ``max_constant_bytes``, ``max_result_bytes``,
    ``max_sweep_cells``); the server adds two policy fields of its own. See ``docs/server.md``.
    """

    graph: ir.Limits = field(default_factory=ir.Limits)
    """The graph's ceilings (over one: RESOURCE_EXHAUSTED); its ``allow_code`` is never set here, it
    comes per request from ``allow_code`` and the key's permission."""
    deadline_seconds: float = 600.0
    """Wall-clock limit of one Run, queueing included (over it: DEADLINE_EXCEEDED)."""
    max_concurrent_runs: int = 0
    """Runs one API key may have in flight at once; 0 = no limit (over it: RESOURCE_EXHAUSTED)."""

    POLICY: ClassVar[tuple[str, ...]] = ("deadline_seconds", "max_concurrent_runs")
    """The server's own keys beside the graph's ceilings."""

    # ------------------------------------------------------------------ the flat form (YAML keys)
    @classmethod
    def flat_types(cls) -> dict[str, Any]:
        """Every key ``limits:`` accepts, with its type: the graph's ceilings, then :data:`POLICY`."""
        graph, own = field_types(ir.Limits), field_types(cls)
        return {**{k: graph[k] for k in ir.Limits.ceilings()}, **{k: own[k] for k in cls.POLICY}}

    @classmethod
    def flat_docs(cls) -> dict[str, str]:
        return {**field_docs(ir.Limits), **field_docs(cls)}

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> LimitsConfig:
        """Limits from flat keys (already of the right types); missing keys keep their defaults."""
        graph = {k: v for k, v in values.items() if k not in cls.POLICY}
        return cls(ir.Limits(**graph), **{k: v for k, v in values.items() if k in cls.POLICY})

    def flat(self) -> dict[str, Any]:
        """The flat keys and their values (what ``limits:`` holds)."""
        return {k: getattr(self.graph, k) for k in ir.Limits.ceilings()} | {
            k: getattr(self, k) for k in self.POLICY
        }

    # ------------------------------------------------------------------ use
    def to_ir(self, allow_code: bool) -> ir.Limits:
        """The executor's view of these limits."""
        return dataclasses.replace(self.graph, allow_code=allow_code)

    def merged(self, overrides: dict[str, Any]) -> LimitsConfig:
        """A copy with ``overrides`` (already validated flat values) applied."""
        return self.from_flat({**self.flat(), **overrides})

    def check(self, path: str) -> list[tuple[str, str]]:
        problems = [
            (f"{path}.{name}", "must be >= 1")
            for name in ir.Limits.ceilings()
            if getattr(self.graph, name) < 1
        ]
        if self.max_concurrent_runs < 0:
            problems.append((f"{path}.max_concurrent_runs", "must be >= 0 (0 = no limit)"))
        if self.deadline_seconds <= 0:
            problems.append((f"{path}.deadline_seconds", "must be > 0"))
        return problems


@dataclass
class TLSConfig:
    """Server-side TLS: a certificate chain and its private key (PEM files)."""

    cert_file: str = ""
    """PEM certificate chain the server presents."""
    key_file: str = ""
    """PEM private key of that certificate."""
    client_ca_file: str | None = None
    """PEM bundle of CAs for client certificates; set it to require mutual TLS."""

    def check(self, path: str) -> list[tuple[str, str]]:
        problems = []
        for name in ("cert_file", "key_file", "client_ca_file"):
            value = getattr(self, name)
            if name != "client_ca_file" and not value:
                problems.append((f"{path}.{name}", "required when tls is set"))
            elif value and not Path(value).expanduser().is_file():
                problems.append((f"{path}.{name}", f"no such file: {value}"))
        return problems


@dataclass
class ModelConfig:
    """One served model: where its weights come from and how many workers hold it."""

    name: str = ""
    """The name clients ask for (``RunRequest.model``); unique within the server."""
    source: str = ""
    """Anything ``HookedTransformer.from_pretrained`` accepts: alias, hub name, folder, ``.gguf`` file."""
    replicas: int = 1
    """Ray actors holding a copy of the model; requests go to the least busy one."""
    num_gpus: float = 0
    """GPUs per replica (Ray resource); above 1 the replica's layers are split over that many GPUs."""
    num_cpus: float = 1
    """CPUs per replica (Ray resource); it also sets the replica's torch threads."""
    dtype: str = "float32"
    """Weight and activation dtype: float32, float16 or bfloat16."""
    device: str = "cpu"
    """``cpu`` or ``cuda`` (``cuda`` needs ``num_gpus`` > 0: Ray hides GPUs from actors without)."""
    process_weights: bool = True
    """Apply TransformerLens weight processing, as ``HookedTransformer.from_pretrained`` does (the same
    numbers as a local ``from_pretrained(source)``); false loads ``from_pretrained_no_processing``
    (Hugging Face's exact logits) and clients see ``cfg.weights_processed == False``."""
    from_pretrained_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for ``from_pretrained`` (e.g. ``default_prepend_bos``, ``first_n_layers``)."""

    @property
    def n_devices(self) -> int:
        """Devices one replica spans (whole GPUs; 1 on CPU or for a fraction of a GPU)."""
        return max(1, int(self.num_gpus)) if self.device.startswith("cuda") else 1

    def check(self, path: str) -> list[tuple[str, str]]:
        problems = []
        if not self.name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/-]*", self.name):
            problems.append((f"{path}.name", f"{self.name!r}: letters, digits and ._:/- (non-empty)"))
        if not self.source:
            problems.append((f"{path}.source", "required"))
        if self.replicas < 1:
            problems.append((f"{path}.replicas", "must be >= 1"))
        if self.num_gpus < 0 or self.num_cpus < 0:
            problems.append((f"{path}.num_gpus" if self.num_gpus < 0 else f"{path}.num_cpus", "must be >= 0"))
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            problems.append((f"{path}.num_gpus", "above 1 it must be a whole number of GPUs"))
        if self.dtype not in DTYPES:
            problems.append((f"{path}.dtype", f"{self.dtype!r} is not one of {', '.join(DTYPES)}"))
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            problems.append((f"{path}.device", f"{self.device!r}: expected 'cpu' or 'cuda'"))
        elif self.device.startswith("cuda") and self.num_gpus <= 0:
            problems.append(
                (f"{path}.num_gpus", "device 'cuda' needs num_gpus > 0 (Ray hides GPUs otherwise)")
            )
        elif self.device == "cpu" and self.num_gpus > 0:
            problems.append(
                (f"{path}.num_gpus", f"device 'cpu' would reserve {self.num_gpus} GPU(s) it never uses")
            )
        return problems


@dataclass
class ServeConfig:
    """Everything ``telelens serve`` needs: address, models, Ray, TLS, keys, limits, streaming."""

    host: str = "127.0.0.1"
    """Interface to listen on (``0.0.0.0`` for every interface)."""
    port: int = 50051
    """TCP port; 0 picks a free one (``ServerHandle.port`` tells which)."""
    models: list[ModelConfig] = field(default_factory=list)
    """The served models (at least one)."""
    ray_address: str | None = None
    """Address of an existing Ray cluster (``auto``, ``ray://host:10001``, ``host:6379``); None starts
    Ray inside the server process."""
    ray_num_cpus: int | None = None
    """CPUs of an embedded Ray (None: all of this machine's)."""
    ray_num_gpus: int | None = None
    """GPUs of an embedded Ray (None: all it detects)."""
    tls: TLSConfig | None = None
    """Serve TLS with these files; None serves plaintext (loopback or a trusted network only)."""
    keys_file: str | None = None
    """YAML/JSON file of API keys (hashed); None: no authentication, every model, no code hooks
    unless ``allow_code``."""
    allow_code: bool = False
    """Whether the server runs ``python(fn)`` code hooks at all (a key must allow them too)."""
    data_dir: str = "~/.cache/telelens/server"
    """Server state (Ray's session files when embedded)."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    """Default per-request limits; a key's ``limits`` override them field by field."""
    chunk_bytes: int = 1 << 20
    """Result chunk size on the wire when the request does not ask for one."""
    worker_chunk_bytes: int = 32 << 20
    """Chunk size of results collected from a worker through Ray (larger is faster, up to a point)."""
    inline_result_bytes: int = 4 << 20
    """Results up to this many bytes in all come back in the worker's own gRPC stream (one hop,
    lowest latency); larger ones through Ray's object store (faster for bulk on one node)."""
    progress_interval_seconds: float = 0.1
    """How often a worker reports a run's progress; a run shorter than this reports none."""
    max_message_bytes: int = 512 << 20
    """Largest gRPC message sent or received (a graph with its constants must fit)."""
    grace_seconds: float = 10.0
    """On shutdown, how long in-flight requests may finish before they are cancelled."""
    startup_timeout_seconds: float = 900.0
    """How long the workers may take to start and load their models."""

    @classmethod
    def for_model(cls, source: str, name: str | None = None, port: int = 0, **overrides: Any) -> ServeConfig:
        """A validated config serving one model (``name`` defaults to the source's last path part).

        ``overrides`` set other fields of :class:`ServeConfig`; those of :class:`ModelConfig`
        (``replicas``, ``num_cpus``, ``dtype``, ``device``, ...) go to the model.
        """
        model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
        model_kw = {k: overrides.pop(k) for k in list(overrides) if k in model_fields}
        model = {"name": name or default_model_name(source), "source": str(source), **model_kw}
        return config_from_dict({"port": port, "models": [model], **overrides})

    @property
    def ray_temp_dir(self) -> str:
        """Ray's session folder: short, because Ray's Unix socket paths must stay under ~107 bytes."""
        candidate = Path(self.data_dir).expanduser() / "ray"
        if len(str(candidate)) <= 40:
            return str(candidate)
        digest = hashlib.sha256(str(candidate).encode()).hexdigest()[:8]
        return os.path.join(tempfile.gettempdir(), f"tl-ray-{digest}")

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def check(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if not 0 <= self.port <= 65535:
            problems.append(("port", "must be in 0..65535"))
        if not self.models:
            problems.append(("models", "serve at least one model"))
        seen: set[str] = set()
        for i, m in enumerate(self.models):
            problems += m.check(f"models[{i}]")
            if m.name in seen:
                problems.append((f"models[{i}].name", f"{m.name!r} is used by another model"))
            seen.add(m.name)
        if self.tls is not None:
            problems += self.tls.check("tls")
        if self.keys_file is not None and not Path(self.keys_file).expanduser().is_file():
            problems.append(("keys_file", f"no such file: {self.keys_file}"))
        problems += self.limits.check("limits")
        if not 1024 <= self.max_message_bytes <= MAX_GRPC_MESSAGE:
            problems.append(("max_message_bytes", f"must be in 1024..{MAX_GRPC_MESSAGE}"))
        for name in ("chunk_bytes", "worker_chunk_bytes"):
            value = getattr(self, name)
            if not 4096 <= value <= self.max_message_bytes - CHUNK_OVERHEAD:
                problems.append((name, f"must be in 4096..max_message_bytes - {CHUNK_OVERHEAD}"))
        if self.limits.graph.max_constant_bytes > self.max_message_bytes:
            problems.append(
                (
                    "limits.max_constant_bytes",
                    "larger than max_message_bytes: such a graph could never arrive",
                )
            )
        if self.ray_num_cpus is not None and self.ray_num_cpus < 1:
            problems.append(("ray_num_cpus", "must be >= 1"))
        if self.inline_result_bytes < 0:
            problems.append(("inline_result_bytes", "must be >= 0 (0: every result through Ray)"))
        if self.progress_interval_seconds < 0:
            problems.append(("progress_interval_seconds", "must be >= 0"))
        if self.grace_seconds < 0 or self.startup_timeout_seconds <= 0:
            problems.append(
                ("grace_seconds" if self.grace_seconds < 0 else "startup_timeout_seconds", "out of range")
            )
        return problems


def default_model_name(source: str) -> str:
    """``"/models/gpt2-small/"`` -> ``"gpt2-small"``; ``"x/y.gguf"`` -> ``"y"``; aliases stay as they are."""
    name = Path(str(source).rstrip("/")).name or str(source)
    return name.removesuffix(".gguf")


# ----------------------------------------------------------------------------------- loading
def load_config(path: str | os.PathLike[str]) -> ServeConfig:
    """Read and validate a YAML (or JSON) config file; relative file paths are taken from its folder."""
    import yaml  # JSON is YAML too

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError([("", f"cannot read {path}: {e}")]) from None
    return config_from_dict(data, source=str(path), base_dir=path.parent)


def config_from_dict(
    data: Any, source: str | None = None, base_dir: str | os.PathLike[str] | None = None
) -> ServeConfig:
    """Validate plain data (from YAML, JSON or code) into a :class:`ServeConfig`."""
    problems: list[tuple[str, str]] = []
    config = build(ServeConfig, data, "", problems)
    if problems:
        raise ConfigError(problems, source)
    assert isinstance(config, ServeConfig)
    if base_dir is not None:
        _resolve_paths(config, Path(base_dir))
    problems = config.check()
    if problems:
        raise ConfigError(problems, source)
    return config


def _resolve_paths(config: ServeConfig, base: Path) -> None:
    def resolve(p: str | None) -> str | None:
        if not p:
            return p
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else base / q)

    config.keys_file = resolve(config.keys_file)
    if config.tls is not None:
        config.tls.cert_file = resolve(config.tls.cert_file) or ""
        config.tls.key_file = resolve(config.tls.key_file) or ""
        config.tls.client_ca_file = resolve(config.tls.client_ca_file)
    for m in config.models:  # a relative folder next to the config, if there is one
        local = base / m.source
        if not Path(m.source).is_absolute() and local.exists():
            m.source = str(local)
