"""What the client needs from a model it does not hold: the GraphBackend protocol.

Two implementations are planned: ``telelens.core.graph.local.LocalBackend(model)`` runs a graph
in-process with the core executor; the remote model (``telelens.connect``) sends it to a
server. The client only ever talks to this protocol, so the same trace runs on either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from telelens.protos import ir


@runtime_checkable
class GraphBackend(Protocol):
    """Runs intervention graphs on one model.

    ``hook_names`` lists the model's hook points in forward order (only those that fire
    under the model's current settings); ``cfg`` is an object with TransformerLens config
    attributes (``n_layers``, ``n_heads``, ``d_model``, ``d_head``, ``d_vocab``, ...).
    A backend may also offer ``to_tokens(text) -> torch.Tensor`` ([batch, pos] ids), an
    ``allow_code`` default for its calls, and ``_registered_hooks("fwd")``: ``(hook name, op)``
    pairs applied to every run of every graph built for it (a remote model's ``add_hook``).
    """

    cfg: Any

    @property
    def hook_names(self) -> list[str]:
        """The hook points that fire under the model's current settings, in forward order
        (read-only here: a backend may compute it, as ``LocalBackend`` does)."""
        ...

    def execute(self, graph: ir.Graph, allow_code: bool = False) -> dict[str, torch.Tensor]:
        """Validate and run ``graph``; return every saved value by its save name."""
        ...


def backend_allows_code(backend: Any) -> bool:
    """The backend's default for ``allow_code`` (a remote model's ``allow_code``; False otherwise)."""
    return bool(getattr(backend, "allow_code", False))


def backend_run_hooks(backend: Any, dir: str = "fwd") -> list[tuple[str, Any]]:
    """The hooks registered on the backend, applied to every run (none for a local backend)."""
    registered = getattr(backend, "_registered_hooks", None)
    return list(registered(dir)) if registered is not None else []


def backend_to_tokens(backend: Any, text: str | list[str], prepend_bos: bool | None = None) -> torch.Tensor:
    """``backend.to_tokens`` if the backend has one, else a clear error."""
    to_tokens = getattr(backend, "to_tokens", None)
    if to_tokens is None:
        raise TypeError(f"{type(backend).__name__} cannot tokenize text here: pass token ids instead")
    if prepend_bos is None:
        return to_tokens(text)
    return to_tokens(text, prepend_bos=prepend_bos)
