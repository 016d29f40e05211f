"""``telelens.utils`` is ``telelens.lens.utils`` (TransformerLens's import path kept working)."""

import sys

from telelens.lens import utils as _impl

sys.modules[__name__] = _impl
