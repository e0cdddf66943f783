"""The optional C featuriser (``router/_fastfeat.c``), or ``None`` where it is not built.

It is built at install time when a C compiler is there (pyproject ``ext-modules``, ``optional``). Every
function in it is an exact replacement of a Python reference in router/features.py and
router/char_ngrams.py for ASCII text, and returns ``None`` for other text, so callers fall back to the
reference; tests/router_learning/test_fastfeat.py checks the two agree. Setting
``HYBRIDGATE_PURE_PYTHON_FEATURES=1`` makes a process use the references only (an operator's switch to
rule the extension out).
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["fastfeat"]


def _load() -> ModuleType | None:
    if os.environ.get("HYBRIDGATE_PURE_PYTHON_FEATURES", "") not in ("", "0"):
        return None
    try:
        from router import _fastfeat
    except ImportError:  # installed without a C compiler
        return None
    return _fastfeat


fastfeat: ModuleType | None = _load()
