"""``telelens.patching`` is ``telelens.core.patching`` (TransformerLens's import path kept working)."""

import sys

from telelens.core import patching as _impl

sys.modules[__name__] = _impl
