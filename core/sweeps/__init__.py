"""Fast activation-patching sweeps, attribution patching and ablation sweeps.

- :func:`sweep_sites` (``engine``): the metric of many patched variants, batched and resumed
  from the corrupted run (see the engine's docstring for how).
- :class:`PatchSite`: one cell; :class:`SweepOptions`: the engine's knobs;
  :class:`SweepUnsupported`: raised when only the one-pass-per-cell loop can run a sweep.
- :func:`~telelens.core.sweeps.runner.run_cells` (``runner``): the one sweep runner, the engine
  or one forward pass per cell, for both the patching helpers and the graph's Sweep node.
- :func:`attribution_patch`: the gradient approximation of patching, one forward and one backward.
- :func:`ablation_sweep`: zero or mean ablation of every head or neuron, batched.

TransformerLens-compatible entry points (``generic``, ``setters``, ``helpers``) are gathered in
:mod:`telelens.core.patching`.
"""

from telelens.core.sweeps.engine import SweepOptions, has_active_hooks, sweep_sites
from telelens.core.sweeps.sites import PatchSite, SweepUnsupported

__all__ = ["PatchSite", "SweepOptions", "SweepUnsupported", "has_active_hooks", "sweep_sites"]
