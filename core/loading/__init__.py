"""Loading pretrained weights into a :class:`~telelens.core.hooked_transformer.HookedTransformer`.

``load_pretrained`` is what ``HookedTransformer.from_pretrained`` calls. Sources: a local
Hugging Face folder (safetensors or .bin, sharded or not), a ``.gguf`` file (converted once,
then read from ``$TELELENS_CACHE``), a hub name or TransformerLens alias, or an already
loaded Hugging Face model (``hf_model=``).
"""

from telelens.core.loading.checkpoint import SafetensorsWriter
from telelens.core.loading.load import load_pretrained, parse_dtype
from telelens.core.loading.resolve import ResolvedModel, UnknownModelError, resolve_model
from telelens.core.loading.weights import CheckpointMismatchError

__all__ = [
    "CheckpointMismatchError",
    "ResolvedModel",
    "SafetensorsWriter",
    "UnknownModelError",
    "load_pretrained",
    "parse_dtype",
    "resolve_model",
]
