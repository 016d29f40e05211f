"""``telelens.utils`` is ``telelens.core.utils`` (TransformerLens's import path kept working)."""

import sys

from telelens.core import utils as _impl

sys.modules[__name__] = _impl
