"""``telelens.utils`` is ``telelens.lens.utils`` (TransformerLens's import path kept working)."""

import sys
from typing import TYPE_CHECKING

from telelens.lens import utils as _impl

if TYPE_CHECKING:  # what type checkers see; at run time the module itself stands here
    from telelens.lens.utils import *  # noqa: F403

sys.modules[__name__] = _impl
