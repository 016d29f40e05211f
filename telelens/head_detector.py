"""``telelens.head_detector`` is ``telelens.core.head_detector`` (TransformerLens's import path kept working)."""

import sys
from typing import TYPE_CHECKING

from telelens.core import head_detector as _impl

if TYPE_CHECKING:  # what type checkers see; at run time the module itself stands here
    from telelens.core.head_detector import *  # noqa: F403

sys.modules[__name__] = _impl
