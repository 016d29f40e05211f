"""telelens: TransformerLens at a distance.

``import telelens`` is cheap: the everyday names below load on first use, so the thin
client (``telelens.client``) never pulls in torch-heavy core code.

    from telelens import HookedTransformer
    model = HookedTransformer.from_pretrained("smollm2-135m")
    logits, cache = model.run_with_cache("The Eiffel Tower is in", names_filter="blocks.6.hook_resid_post")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "HookedTransformer": "telelens.core.hooked_transformer",
    "HookedTransformerConfig": "telelens.core.config",
    "HookedTransformerKeyValueCache": "telelens.core.hooked_transformer",
    "TransformerLensKeyValueCache": "telelens.core.forward_context",
    "TransformerLensKeyValueCacheEntry": "telelens.core.forward_context",
    "ActivationCache": "telelens.lens.activation_cache",
    "FactoredMatrix": "telelens.lens.factored_matrix",
    "HookPoint": "telelens.core.hook_points",
    "HookedRootModule": "telelens.core.hook_points",
    "connect": "telelens.client",
}
_LAZY_MODULES = {
    "components": "telelens.components",
    "utils": "telelens.utils",
    "patching": "telelens.patching",
    "head_detector": "telelens.head_detector",
    "weight_processing": "telelens.core.weight_processing",
}

__all__ = [*_LAZY, *_LAZY_MODULES, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _LAZY_MODULES:
        value = importlib.import_module(_LAZY_MODULES[name])
    else:
        raise AttributeError(f"module 'telelens' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
