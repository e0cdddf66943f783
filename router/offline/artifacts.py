"""Versioned router artifacts on disk: ``DIR/manifest.json`` + ``DIR/model.joblib`` (file I/O lives here).

The manifest records what a deployed model is and where it came from: format version, creation time,
models (exact data column names), training-data hashes, config and metrics. ``load_artifact`` refuses an
artifact whose format version it does not know, or whose model file does not match the manifest's hash.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

import joblib

from router.classifier import QualityClassifier
from router.verifier import AnswerVerifier

# 2: the character n-gram block is built word by word (router/char_ngrams.py); a format-1 model's
# coefficients were fitted to different features, so it is refused and must be retrained.
ARTIFACT_FORMAT = 2
MANIFEST = "manifest.json"
MODEL_FILE = "model.joblib"
CLASSIFIER_KIND = "hybridgate.router.QualityClassifier"
VERIFIER_KIND = "hybridgate.router.AnswerVerifier"

__all__ = ["ARTIFACT_FORMAT", "save_artifact", "load_artifact", "read_manifest", "save_verifier", "load_verifier"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write(obj: object, out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Pickle ``obj`` into ``out_dir`` (created if needed) and write ``manifest`` beside it with the
    model file's name and hash; returns the manifest path. Shared by both artifact kinds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILE
    joblib.dump(obj, model_path, compress=3)
    manifest = {**manifest, "model_file": MODEL_FILE, "model_sha256": _sha256(model_path)}
    mpath = out / MANIFEST
    mpath.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return mpath


def _stamp(created: str | None, version: str | None) -> dict[str, str]:
    """Creation time (now unless given) and version (derived from it unless given)."""
    created = created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return {"created": created, "version": version or created.replace(":", "").replace("-", "")}


def _read(d: Path, manifest: dict[str, Any], cls: type) -> Any:
    """The model file of artifact ``d``, after checking it against the manifest's hash, as a ``cls``."""
    model_path = d / manifest.get("model_file", MODEL_FILE)
    if manifest.get("model_sha256") and _sha256(model_path) != manifest["model_sha256"]:
        raise ValueError(f"{model_path} does not match the manifest hash")
    obj = joblib.load(model_path)
    if not isinstance(obj, cls):
        raise TypeError(f"{model_path} holds {type(obj).__name__}, not {cls.__name__}")
    return obj


def save_artifact(
    clf: QualityClassifier,
    out_dir: str | Path,
    data_hashes: dict[str, str] | None = None,
    metrics: dict[str, Any] | None = None,
    version: str | None = None,
    created: str | None = None,
) -> Path:
    """Write the classifier and its manifest to ``out_dir`` (created if needed); returns the manifest path."""
    return _write(clf, out_dir, {
        "format": ARTIFACT_FORMAT,
        "kind": CLASSIFIER_KIND,
        **_stamp(created, version),
        "models": list(clf.models),
        "strong": clf.strong,
        "weak": clf.weak,
        "training_data": data_hashes or {},
        "metrics": metrics or {},
        "train": clf.metadata,
    })


def read_manifest(art_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(art_dir) / MANIFEST).read_text())


def load_artifact(art_dir: str | Path, *, warm_up: bool = True) -> tuple[QualityClassifier, dict[str, Any]]:
    """Load (classifier, manifest). Only load artifacts you trust: the model file is a pickle.

    ``warm_up`` builds the classifier's decision-time tables now (:meth:`QualityClassifier.warm_up`,
    ~0.5 s for the MMLU artifact), so the first requests after a load are as fast as later ones.
    """
    d = Path(art_dir)
    manifest = read_manifest(d)
    if manifest.get("format") != ARTIFACT_FORMAT:
        raise ValueError(
            f"unsupported artifact format {manifest.get('format')!r} in {d} (this gateway reads format "
            f"{ARTIFACT_FORMAT}); retrain it with `hybridgate router train`"
        )
    if manifest.get("kind", CLASSIFIER_KIND) != CLASSIFIER_KIND:
        raise ValueError(f"{d} holds {manifest['kind']!r}, not a router classifier")
    clf: QualityClassifier = _read(d, manifest, QualityClassifier)
    if warm_up:
        clf.warm_up()
    return clf, manifest


def save_verifier(v: AnswerVerifier, out_dir: str | Path, data_hashes: dict[str, str] | None = None) -> Path:
    """Write an answer verifier (router/verifier.py) and its manifest to ``out_dir``."""
    return _write(v, out_dir, {
        "format": ARTIFACT_FORMAT,
        "kind": VERIFIER_KIND,
        **_stamp(None, None),
        "judges_model": v.model,
        "features": list(v.feature_names),
        "training_data": data_hashes or {},
        "metrics": v.metadata.get("cv", {}),
    })


def load_verifier(art_dir: str | Path) -> tuple[AnswerVerifier, dict[str, Any]]:
    """Load (verifier, manifest), checking its kind and hash as :func:`load_artifact` does."""
    d = Path(art_dir)
    manifest = read_manifest(d)
    if manifest.get("kind") != VERIFIER_KIND:
        raise ValueError(f"{d} holds {manifest.get('kind')!r}, not an answer verifier")
    return _read(d, manifest, AnswerVerifier), manifest
