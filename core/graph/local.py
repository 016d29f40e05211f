"""Local mode: the client's graph builder backed by the in-process executor.

``model.trace()`` on a local HookedTransformer goes through here, so local and remote
runs execute the same graph with the same executor and give the same numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from telelens.core.graph.execute import execute
from telelens.core.graph.hooks import hook_table
from telelens.protos import ir

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer


class LocalBackend:
    """A :class:`telelens.trace.backend.GraphBackend` over a model in this process."""

    def __init__(self, model: HookedTransformer, limits: ir.Limits | None = None) -> None:
        self.model = model
        self.cfg = model.cfg
        self.limits = limits or ir.Limits()

    @property
    def hook_names(self) -> list[str]:
        """Hook points that fire under the model's current switches, in forward order."""
        return [h for h in hook_table(self.model).order if h != ir.LOGITS]

    def to_tokens(self, text: str | list[str], prepend_bos: bool | None = None) -> torch.Tensor:
        return self.model.to_tokens(text, prepend_bos=prepend_bos)

    def execute(
        self, graph: ir.Graph, allow_code: bool = False, progress: Any = None
    ) -> dict[str, torch.Tensor]:
        """Validate and run ``graph``; code hooks need ``allow_code`` (off by default, as on a server)."""
        limits = ir.Limits(**{**self.limits.__dict__, "allow_code": allow_code or self.limits.allow_code})
        return execute(self.model, graph, limits, progress=progress)
