"""API keys: a YAML/JSON file of hashed keys, the interceptor that checks them, and key creation.

The file (``ServeConfig.keys_file``) holds, per key, a name, the key's SHA-256 (never the
key itself), the models it may use (a list or ``"*"``), whether it may send code hooks, a
priority and limit overrides::

    keys:
      - name: alice
        key_sha256: 9f86d081884c7d65...   # telelens keys add alice --keys-file keys.yaml
        models: "*"
        allow_code: false
        priority: 0
        limits: {max_result_bytes: 1 GiB}

Clients send ``authorization: Bearer <key>`` metadata. A missing or unknown key is
UNAUTHENTICATED (the key is never echoed). A model the key may not use answers exactly like a
model the server does not have (NOT_FOUND), so a key cannot probe which models exist.
The file is re-read when it changes, so keys can be added or revoked without a restart; it is
always rewritten atomically, and a file that does not load is logged and the last good keys kept.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from telelens.server._private.config_parsing import parse_field
from telelens.server._private.failures import clip
from telelens.server.config import ConfigError, LimitsConfig

METADATA_KEY = "authorization"
PROTECTED_PREFIX = "/telelens.v1."
"""Methods under this prefix need a key; others (health checking, reflection) do not."""
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
log = logging.getLogger(__name__)


class AuthError(Exception):
    """A call refused by auth: ``code`` is UNAUTHENTICATED or NOT_FOUND (a model the key may not use)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ApiKey:
    """One key's identity and permissions (the secret itself is never stored)."""

    name: str
    key_sha256: str = ""
    models: tuple[str, ...] | None = None
    """Models this key may use; None means every model."""
    allow_code: bool = False
    priority: int = 0
    limits: dict[str, Any] = field(default_factory=dict)
    """Overrides of :class:`~telelens.server.config.LimitsConfig` keys (its flat form)."""

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


ANONYMOUS = ApiKey(name="anonymous", allow_code=True)
"""The principal when the server has no keys file: every model; code still needs ``allow_code``."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random API key (256 bits)."""
    return "tl-" + secrets.token_urlsafe(32)


def bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The key of an ``authorization: Bearer <key>`` entry, or None."""
    for k, v in metadata or ():
        if k.lower() == METADATA_KEY:
            text = v.decode() if isinstance(v, bytes) else str(v)
            scheme, _, key = text.strip().partition(" ")
            if scheme.lower() == "bearer" and key.strip():
                return key.strip()
    return None


# ---------------------------------------------------------------------------------- the store
class KeyStore:
    """The keys of one keys file (or none: everyone is :data:`ANONYMOUS`)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else None
        self._by_hash: dict[str, ApiKey] = {}
        self._seen: tuple[int, int, int] | None = None  # (mtime_ns, inode, size) of the file last read
        self._lock = threading.Lock()
        if self.path is not None:
            self._reload(force=True)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def authenticate(self, metadata: Iterable[tuple[str, Any]] | None) -> ApiKey:
        """The caller's key, or :class:`AuthError` (UNAUTHENTICATED)."""
        if self.path is None:
            return ANONYMOUS
        key = bearer(metadata)
        if key is None:
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED, "an API key is required: send 'authorization: Bearer <key>'"
            )
        self._reload()
        found = self._by_hash.get(hash_key(key))
        if found is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "unknown API key")
        return found

    @staticmethod
    def authorize(key: ApiKey, model: str, served: Iterable[str]) -> None:
        """:class:`AuthError` (NOT_FOUND) unless ``model`` is in ``served`` and ``key`` may use it.

        An unknown model and a forbidden one get the same status and message, so a key learns
        nothing about models it may not use.
        """
        served = list(served)
        if model in served and key.may_use(model):
            return
        allowed = [m for m in served if key.may_use(m)]
        usable = f"your key may use: {', '.join(allowed)}" if allowed else "your key may use no model here"
        raise AuthError(
            grpc.StatusCode.NOT_FOUND,
            f"model {clip(model)!r} is not served for this key; {clip(usable, 1000)}",
        )

    def _reload(self, force: bool = False) -> None:
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError as e:
            if force:
                raise ConfigError([("keys_file", f"cannot read {self.path}: {e}")]) from None
            return  # keep the keys we have; the file is being replaced
        # The inode and size too: an atomic replace within the clock's resolution is still seen.
        seen = (st.st_mtime_ns, st.st_ino, st.st_size)
        if not force and seen == self._seen:
            return
        with self._lock:
            if not force and seen == self._seen:
                return
            try:
                keys = read_keys_file(self.path)
            except Exception as e:
                if force:
                    raise
                # Keep serving with the last good keys; warn once per version of the file.
                self._seen = seen
                log.warning(
                    "keys file %s does not load (%s); keeping the %d keys loaded before",
                    self.path, e, len(self._by_hash),
                )  # fmt: skip
                return
            self._by_hash = {k.key_sha256: k for k in keys}
            self._seen = seen


def read_keys_file(path: Path) -> list[ApiKey]:
    """Parse and validate a keys file; :class:`ConfigError` names each bad entry and field."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError([("", f"cannot read {path}: {e}")], str(path)) from None
    entries = data.get("keys", []) if isinstance(data, dict) else data
    problems: list[tuple[str, str]] = []
    if not isinstance(entries, list):
        raise ConfigError([("keys", "expected a list of keys")], str(path))
    keys: list[ApiKey] = []
    names: set[str] = set()
    hashes: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"keys[{i}]"
        if not isinstance(entry, dict):
            problems.append((where, "expected a mapping"))
            continue
        key = _parse_entry(entry, where, problems)
        if key is None:
            continue
        if key.name in names:
            problems.append((f"{where}.name", f"{key.name!r} is used by another key"))
        if key.key_sha256 in hashes:
            problems.append((f"{where}.key_sha256", "the same key is listed twice"))
        names.add(key.name)
        hashes.add(key.key_sha256)
        keys.append(key)
    if problems:
        raise ConfigError(problems, str(path))
    return keys


def _parse_entry(entry: dict[str, Any], where: str, problems: list[tuple[str, str]]) -> ApiKey | None:
    before = len(problems)
    known = {"name", "key_sha256", "models", "allow_code", "priority", "limits"}
    for extra in sorted(set(entry) - known):
        problems.append((f"{where}.{extra}", f"unknown field (expected one of {', '.join(sorted(known))})"))
    name, digest = entry.get("name"), str(entry.get("key_sha256", "")).lower()
    if not isinstance(name, str) or not name:
        problems.append((f"{where}.name", "required (a non-empty string)"))
    if not _HEX64.match(digest):
        problems.append((f"{where}.key_sha256", "required: 64 hex digits (the SHA-256 of the key)"))
    models = entry.get("models", "*")
    if models != "*" and not (isinstance(models, list) and all(isinstance(m, str) for m in models)):
        problems.append((f"{where}.models", 'a list of model names or "*"'))
    allow_code, priority = entry.get("allow_code", False), entry.get("priority", 0)
    if not isinstance(allow_code, bool):
        problems.append((f"{where}.allow_code", "must be true or false"))
    if not isinstance(priority, int) or isinstance(priority, bool):
        problems.append((f"{where}.priority", "must be an integer"))
    limits = _parse_limits(entry.get("limits") or {}, f"{where}.limits", problems)
    if len(problems) > before:
        return None
    return ApiKey(
        name=name,  # type: ignore[arg-type]
        key_sha256=digest,
        models=None if models == "*" else tuple(models),
        allow_code=allow_code,
        priority=priority,
        limits=limits,
    )


def _parse_limits(data: Any, where: str, problems: list[tuple[str, str]]) -> dict[str, Any]:
    if not isinstance(data, dict):
        problems.append((where, "expected a mapping of limit overrides"))
        return {}
    hints = LimitsConfig.flat_types()
    before = len(problems)
    out = {}
    for k, v in data.items():
        if k not in hints:
            problems.append((f"{where}.{k}", f"unknown limit (expected one of {', '.join(hints)})"))
            continue
        out[k] = parse_field(hints[k], k, v, f"{where}.{k}", problems)
    if len(problems) == before:
        problems += [p for p in LimitsConfig().merged(out).check(where) if p[0].rsplit(".", 1)[1] in out]
    return out


def add_key(
    path: str | os.PathLike[str],
    name: str,
    models: list[str] | None = None,
    allow_code: bool = False,
    priority: int = 0,
    limits: dict[str, Any] | None = None,
) -> str:
    """Create a key, append its hash to the keys file (created 0600 if missing); return the key."""
    path = Path(path).expanduser()
    existing = read_keys_file(path) if path.exists() else []
    if any(k.name == name for k in existing):
        raise ValueError(f"{path} already has a key named {name!r}")
    key = new_key()
    data = _file_data(path)
    entry: dict[str, Any] = {"name": name, "key_sha256": hash_key(key), "models": models or "*"}
    entry.update({"allow_code": allow_code, "priority": priority, "limits": limits or {}})
    data["keys"].append(entry)
    _write_atomically(path, data)
    return key


def revoke_key(path: str | os.PathLike[str], name: str) -> None:
    """Remove the key called ``name`` from the keys file; a running server refuses it from its next reload."""
    path = Path(path).expanduser()
    existing = read_keys_file(path) if path.exists() else []
    if not any(k.name == name for k in existing):
        raise ValueError(f"{path} has no key named {name!r}")
    data = _file_data(path)
    data["keys"] = [e for e in data["keys"] if not (isinstance(e, dict) and e.get("name") == name)]
    _write_atomically(path, data)


def _file_data(path: Path) -> dict[str, Any]:
    """The keys file as a mapping with a ``keys`` list (other top-level fields kept)."""
    import yaml

    data = yaml.safe_load(path.read_text()) if path.exists() else None
    data = data if isinstance(data, dict) else {"keys": data or []}
    data["keys"] = data.get("keys") or []
    return data


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to a 0600 temp file beside ``path``, fsync it, then rename it over ``path``.

    A server re-reading the file sees the old or the new version, never a half-written one.
    """
    import yaml

    text = yaml.safe_dump(data, sort_keys=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        read_keys_file(Path(tmp))  # what we wrote must load
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------------------- interceptor
class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls to ``telelens.v1`` methods without a valid key (UNAUTHENTICATED).

    Per-model permission (PERMISSION_DENIED) is checked by the service, which knows the model.
    """

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if not self.keys.enabled or not handler_call_details.method.startswith(PROTECTED_PREFIX):
            return handler
        try:
            self.keys.authenticate(handler_call_details.invocation_metadata)
        except AuthError as e:
            return _refusal(handler, e)
        return handler


def _refusal(handler: grpc.RpcMethodHandler | None, error: AuthError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that only aborts with ``error``."""

    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(error.code, error.message)

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        await context.abort(error.code, error.message)
        yield  # pragma: no cover  (makes this an async generator)

    if handler is not None and handler.response_streaming and not handler.request_streaming:
        return grpc.unary_stream_rpc_method_handler(
            abort_stream, handler.request_deserializer, handler.response_serializer
        )
    return grpc.unary_unary_rpc_method_handler(
        abort,
        handler.request_deserializer if handler is not None else None,
        handler.response_serializer if handler is not None else None,
    )
