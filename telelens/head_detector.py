"""``telelens.head_detector`` is ``telelens.core.head_detector`` (TransformerLens's import path kept working)."""

import sys

from telelens.core import head_detector as _impl

sys.modules[__name__] = _impl
