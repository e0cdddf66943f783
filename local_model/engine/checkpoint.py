"""Where checkpoints come from: a directory path, or ``"shipped"`` for the model this repo ships.

The shipped checkpoint is looked up, in order, at ``$HYBRIDGATE_LOCAL_MODEL_DIR``,
``local_model/checkpoints/hybridgate-tiny/`` (where ``local_model.train`` exports it),
``local_model/checkpoints/shipped/`` and ``local_model/shipped/`` (the first that holds a ``config.json``).
"""

from __future__ import annotations

import os
from pathlib import Path

SHIPPED = "shipped"
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def shipped_candidates() -> list[Path]:
    out = []
    env = os.environ.get("HYBRIDGATE_LOCAL_MODEL_DIR")
    if env:
        out.append(Path(env))
    ck = _PACKAGE_DIR / "checkpoints"
    out += [ck / "hybridgate-tiny", ck / "shipped", _PACKAGE_DIR / "shipped"]
    return out


def resolve_checkpoint(spec: str | os.PathLike[str]) -> Path:
    """A checkpoint directory for ``spec`` (a path or "shipped"); FileNotFoundError if there is none."""
    if str(spec) == SHIPPED:
        for cand in shipped_candidates():
            if (cand / "config.json").is_file():
                return cand
        tried = ", ".join(str(c) for c in shipped_candidates())
        raise FileNotFoundError(f"no shipped local-model checkpoint found (looked in: {tried})")
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint directory (no config.json)")
    return path
