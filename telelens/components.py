"""``telelens.components`` is ``telelens.core.components`` (TransformerLens's import path kept working)."""

import sys
from typing import TYPE_CHECKING

from telelens.core import components as _impl

if TYPE_CHECKING:  # what type checkers see; at run time the module itself stands here
    from telelens.core.components import *  # noqa: F403

sys.modules[__name__] = _impl
