"""``telelens.patching`` is ``telelens.core.patching`` (TransformerLens's import path kept working)."""

import sys
from typing import TYPE_CHECKING

from telelens.core import patching as _impl

if TYPE_CHECKING:  # what type checkers see; at run time the module itself stands here
    from telelens.core.patching import *  # noqa: F403

sys.modules[__name__] = _impl
