"""Writing router and verifier artifacts (offline tooling; loading lives in ``router.artifacts``).

Each artifact is a directory of data files (``arrays.safetensors``, and for a router classifier its
vocabulary ``vocab.json``) plus ``manifest.json`` recording what it is and the SHA-256 of every data
file, which :mod:`router.artifacts` checks before parsing anything. The loaders are re-exported here so
offline tools read and write artifacts through one import.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save as save_safetensors

from router.artifacts import (
    ARRAYS,
    ARTIFACT_FORMAT,
    CLASSIFIER_KIND,
    MANIFEST,
    VERIFIER_KIND,
    VOCAB,
    ArtifactError,
    ArtifactPathError,
    load_artifact,
    load_verifier,
    read_manifest,
)
from router.classifier import QualityClassifier
from router.verifier import AnswerVerifier

__all__ = [
    "ARRAYS",
    "ARTIFACT_FORMAT",
    "VOCAB",
    "ArtifactError",
    "ArtifactPathError",
    "save_artifact",
    "load_artifact",
    "read_manifest",
    "save_verifier",
    "load_verifier",
]


def _stamp(created: str | None, version: str | None) -> dict[str, str]:
    """Creation time (now unless given) and version (derived from it unless given)."""
    created = created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return {"created": created, "version": version or created.replace(":", "").replace("-", "")}


def _write(
    arrays: dict[str, np.ndarray],
    out_dir: str | Path,
    manifest: dict[str, Any],
    extra: dict[str, bytes] | None = None,
) -> Path:
    """Write ``arrays`` as ``ARRAYS`` and each ``extra`` file in ``out_dir`` (created if needed), then
    ``manifest`` beside them with their hashes; returns the manifest path. Shared by both kinds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        ARRAYS: save_safetensors({k: np.ascontiguousarray(v) for k, v in arrays.items()}),
        **(extra or {}),
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    manifest = {
        **manifest,
        "format": ARTIFACT_FORMAT,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }
    mpath = out / MANIFEST
    mpath.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return mpath


def save_artifact(
    clf: QualityClassifier,
    out_dir: str | Path,
    data_hashes: dict[str, str] | None = None,
    metrics: dict[str, Any] | None = None,
    version: str | None = None,
    created: str | None = None,
) -> Path:
    """Write the classifier and its manifest to ``out_dir`` (created if needed); returns the manifest path."""
    fz = clf.featurizer
    terms = [""] * fz.n_text
    for term, col in fz.vocab.items():
        terms[col] = term
    arrays = {
        "idf": fz.idf,
        "dense_mean": fz.dense_mean,
        "dense_scale": fz.dense_scale,
        "text_coef": clf.text_coef,
        "dense_coef": clf.dense_coef,
        "intercept": clf.intercept,
    }
    if clf.cost_model is not None:
        arrays["cost_base"] = clf.cost_model.base
        arrays["cost_per_char"] = clf.cost_model.per_char
    if clf.prior is not None and clf.prior_coef is not None:
        arrays["group_coef"] = clf.prior.coef.astype(np.float32)  # centroids x temperature: float32 is plenty
        arrays["group_intercept"] = clf.prior.intercept
        arrays["group_accuracy"] = clf.prior.accuracy
        arrays["prior_coef"] = clf.prior_coef
    vocab = json.dumps(terms, ensure_ascii=False).encode("utf-8")
    return _write(
        arrays,
        out_dir,
        {
            "kind": CLASSIFIER_KIND,
            **_stamp(created, version),
            "models": list(clf.models),
            "strong": clf.strong,
            "weak": clf.weak,
            "dense_features": fz.n_dense > 0,
            **({"groups": list(clf.prior.groups)} if clf.prior is not None else {}),
            "training_data": data_hashes or {},
            "metrics": metrics or {},
            "train": clf.metadata,
        },
        {VOCAB: vocab},
    )


def save_verifier(v: AnswerVerifier, out_dir: str | Path, data_hashes: dict[str, str] | None = None) -> Path:
    """Write an answer verifier (router/verifier.py) and its manifest to ``out_dir``."""
    arrays = {"mean": v.mean, "scale": v.scale, "coef": v.coef, "intercept": np.array([v.intercept])}
    return _write(
        arrays,
        out_dir,
        {
            "kind": VERIFIER_KIND,
            **_stamp(None, None),
            "judges_model": v.model,
            "features": list(v.feature_names),
            "training_data": data_hashes or {},
            "metrics": v.metadata.get("cv", {}),
            "train": v.metadata,
        },
    )
