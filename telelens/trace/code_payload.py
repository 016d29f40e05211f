"""Python hook functions as CodeHook payloads: what they capture travels, or is refused here.

A hook written for a local model often captures the model and a cache of its activations::

    def patch_hook(act, hook):
        act[:, pos] = clean_cache[hook.name][:, pos]
        return act

Pickled as is for a remote model, ``clean_cache`` drags its ``RemoteModel`` (and the gRPC
channel) along. :func:`dumps` pickles with persistent ids instead: any model (a ``ModelSurface``:
a ``RemoteModel`` or a local ``HookedTransformer``) becomes "the executing model", a remote model's
lazy weight (``W_U``) becomes its name, and an ``ActivationCache`` travels as its tensors and
``has_batch_dim``; :func:`loads` rebuilds them over
the executor's own model (the cache's tensors on that model's device). So a local model is never
pickled either. Something that cannot travel (a lock, a socket, a generator, an open file, ...) is
refused before anything is sent, by an :class:`UntransferableCodeError` naming the captured variable.

Torch only; cloudpickle is imported when a payload is made or read.
"""

from __future__ import annotations

import io
import pickle
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

from telelens.lens.activation_cache import ActivationCache
from telelens.lens.surface import ModelSurface

MODEL = "telelens:model"
CACHE = "telelens:activation_cache"
WEIGHT = "telelens:weight"
WEIGHT_NAME_ATTR = "__telelens_weight__"
"""A tensor with this attribute (a weight name: a remote model's lazy ``W_U``) travels as the name."""


class UntransferableCodeError(TypeError):
    """A hook function captures something that cannot be sent to the executor."""


def _refused(obj: Any) -> str | None:
    """Why ``obj`` must not travel although pickle might take it (None: let pickle decide)."""
    if isinstance(obj, io.IOBase) and not isinstance(obj, (io.BytesIO, io.StringIO)):
        # cloudpickle would send a readable file's *contents*, not the file
        return "an open file stays on this machine: read what the hook needs and capture that"
    return None


def _pickler_class() -> type:
    import cloudpickle

    class _Pickler(cloudpickle.Pickler):  # type: ignore[misc, name-defined]
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, ModelSurface):
                return (MODEL,)
            if isinstance(obj, ActivationCache) and isinstance(obj.model, ModelSurface):
                return (CACHE, dict(obj.cache_dict), bool(obj.has_batch_dim))
            if isinstance(obj, torch.Tensor):
                weight = getattr(obj, WEIGHT_NAME_ATTR, None)
                return (WEIGHT, weight) if isinstance(weight, str) else None
            why = _refused(obj)
            if why is not None:
                raise pickle.PicklingError(f"cannot pickle {type(obj).__name__}: {why}")
            return None

    return _Pickler


def _pickle(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _pickler_class()(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def dumps(fn: Callable[..., Any]) -> bytes:
    """The payload of a CodeHook running ``fn(tensor, hook=...)``.

    Raises :class:`UntransferableCodeError` naming the captured variable (closure cell, global or
    default) that cannot travel, with its type.
    """
    try:
        return _pickle(fn)
    except Exception as error:
        raise UntransferableCodeError(_explain(fn, error)) from error


def _captured(fn: Any) -> Iterator[tuple[str, Any]]:
    """(description, value) of what a function carries: closure cells, globals, defaults."""
    code = getattr(fn, "__code__", None)
    if code is None:  # a callable object or a partial: its attributes
        for name, value in getattr(fn, "__dict__", {}).items():
            yield f"attribute {name!r}", value
        for name in ("func", "args", "keywords"):
            if hasattr(fn, name) and not isinstance(fn, types.BuiltinFunctionType):
                yield f"attribute {name!r}", getattr(fn, name)
        return
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        try:
            yield f"variable {name!r}", cell.cell_contents
        except ValueError:  # an empty cell (a name assigned later)
            continue
    fn_globals = getattr(fn, "__globals__", {})
    for name in sorted(_global_names(code)):
        if name in fn_globals:
            yield f"global {name!r}", fn_globals[name]
    for i, value in enumerate(fn.__defaults__ or ()):
        yield f"default {code.co_varnames[code.co_argcount - len(fn.__defaults__) + i]!r}", value
    for name, value in (fn.__kwdefaults__ or {}).items():
        yield f"default {name!r}", value


def _global_names(code: types.CodeType) -> set[str]:
    """Names a code object (and the functions nested in it) may read as globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _explain(fn: Any, error: Exception) -> str:
    fn_name = getattr(fn, "__name__", None) or type(fn).__name__
    for what, value in _captured(fn):
        if isinstance(value, types.ModuleType):
            continue  # modules travel by reference
        try:
            _pickle(value)
        except Exception as inner:
            kind = f"{type(value).__module__}.{type(value).__qualname__}"
            return (
                f"the hook function {fn_name!r} cannot be sent to the executor: its {what} is a {kind}, "
                f"which cannot travel ({inner}). Capture plain values, tensors, caches or the model "
                "instead, or create the object inside the function"
            )
    return f"the hook function {fn_name!r} cannot be sent to the executor: {type(error).__name__}: {error}"


def loads(payload: bytes, model: Any) -> Callable[..., Any]:
    """The hook function of a payload, its model and caches rebuilt over ``model`` (the executor's)."""
    import cloudpickle  # noqa: F401 (registers what cloudpickled functions need to unpickle)

    device = _device(model)

    class _Unpickler(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            if pid == (MODEL,):
                return model
            if isinstance(pid, tuple) and len(pid) == 3 and pid[0] == CACHE:
                tensors = {k: v.to(device) if device is not None else v for k, v in pid[1].items()}
                return ActivationCache(tensors, model, has_batch_dim=pid[2])
            if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == WEIGHT:
                return model.get_weight(pid[1])
            raise pickle.UnpicklingError(f"unknown persistent id in a code payload: {pid!r}")

    return _Unpickler(io.BytesIO(payload)).load()  # type: ignore[no-any-return]


def _device(model: Any) -> torch.device | None:
    try:
        return model.W_E.device  # type: ignore[no-any-return]
    except Exception:  # a model without an embedding weight: leave tensors where they are
        return None
