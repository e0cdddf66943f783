"""The repo's shipped local-model checkpoint (what `make run` serves), for tests that run it."""

from __future__ import annotations

from pathlib import Path

import pytest

from local_model.engine.checkpoint import SHIPPED, resolve_checkpoint


def shipped_checkpoint() -> Path | None:
    """Its directory, or None where the checkout has none."""
    try:
        return resolve_checkpoint(SHIPPED)
    except FileNotFoundError:
        return None


needs_shipped = pytest.mark.skipif(shipped_checkpoint() is None, reason="no shipped local-model checkpoint in the repo")
