"""The in-process executor of intervention graphs (``telelens.protos.ir``).

``execute(model, graph)`` validates the graph (every error at once, before any forward
pass), plans it (liveness, run order, batching, hook placement, early stop), runs it and
returns the saved tensors. ``validate(model, graph)`` returns the errors only.

Modules: ``validate`` (checks and meta-tensor shape inference), ``plan`` (what runs when,
batched how), ``evaluate`` (the tensor ops, one implementation for meta and real
tensors), ``execute`` (hooks and forward passes), ``sweep`` (activation-patching grids),
``hooks`` (hook order, layer, shape), ``weights``, ``deps``, ``structure``, ``tensors``.
"""

from telelens.core.graph.evaluate import GraphRuntimeError
from telelens.core.graph.execute import execute
from telelens.core.graph.validate import validate

__all__ = ["GraphRuntimeError", "execute", "validate"]
