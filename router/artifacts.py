"""Loading router and verifier artifacts: data only, checked before use (the one file reader in router/).

An artifact is a directory holding ``manifest.json``, the numeric arrays in ``arrays.safetensors`` and,
for a router classifier, its vocabulary in ``vocab.json`` (the terms in column order). The manifest
records what the artifact is (format, kind, models, feature names, creation time, training data
hashes, config, metrics) and the SHA-256 of every data file. Loading reads the manifest, checks that
each file it names is a plain file name inside the directory, checks each file's hash, then parses the
bytes it hashed: safetensors and JSON, formats that hold data only, so nothing in an artifact can
execute code.

Artifacts of format 2 and older stored the model as executable Python objects (``model_file``); they
are refused, never opened, with the command that makes a new one.

The gateway loads artifacts through this module; writing them (``router.offline.artifacts``) is
offline tooling, which the serving path never imports.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors

from router.classifier import CostModel, GroupPrior, QualityClassifier
from router.features import TextFeaturizer
from router.verifier import AnswerVerifier

ARTIFACT_FORMAT = 3
MANIFEST = "manifest.json"
ARRAYS = "arrays.safetensors"
VOCAB = "vocab.json"
CLASSIFIER_KIND = "hybridgate.router.QualityClassifier"
VERIFIER_KIND = "hybridgate.router.AnswerVerifier"
MAX_MANIFEST_BYTES = 1 << 20
KIND_NAMES = {CLASSIFIER_KIND: "a router classifier", VERIFIER_KIND: "an answer verifier"}
RETRAIN = {
    CLASSIFIER_KIND: "hybridgate router train --data CSV... --out DIR",
    VERIFIER_KIND: "hybridgate router train-verifier --data CSV... --model NAME --out DIR",
}
CLASSIFIER_ARRAYS = ("idf", "dense_mean", "dense_scale", "text_coef", "dense_coef", "intercept")
PRIOR_ARRAYS = ("group_coef", "group_intercept", "group_accuracy", "prior_coef")

__all__ = [
    "ARTIFACT_FORMAT",
    "ArtifactError",
    "ArtifactPathError",
    "load_artifact",
    "read_manifest",
    "load_verifier",
]


class ArtifactError(ValueError):
    """The artifact is not one this gateway loads (old format, wrong kind, hash mismatch, bad arrays)."""


class ArtifactPathError(ArtifactError):
    """The manifest names a file that is not a plain file inside the artifact directory."""


def read_manifest(art_dir: str | Path) -> dict[str, Any]:
    """The manifest of artifact directory ``art_dir`` (OSError when there is none)."""
    path = Path(art_dir) / MANIFEST
    with open(path, "rb") as fh:
        raw = fh.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} is not a JSON object")
    return manifest


def _data_file(d: Path, name: object) -> Path:
    """``d/name`` for a plain file name that stays inside ``d`` after symlinks are resolved."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or Path(name).is_absolute()
    ):
        raise ArtifactPathError(f"the manifest names {name!r}, which is not a plain file name")
    path = d / name
    real, root = path.resolve(), d.resolve()
    if real.parent != root or not real.is_file():
        raise ArtifactPathError(f"{name!r} is not a file inside the artifact directory")
    return real


def _read(art_dir: str | Path, kind: str) -> tuple[dict[str, np.ndarray], dict[str, bytes], dict[str, Any]]:
    """(arrays, the bytes of every data file, manifest) of the artifact at ``art_dir`` after every check
    in the module docstring."""
    d = Path(art_dir)
    if d.is_file():
        raise ArtifactError(
            f"{d} is a file; an artifact is a directory with {MANIFEST} (make one with `{RETRAIN[kind]}`)"
        )
    manifest = read_manifest(d)
    files = manifest.get("files")
    paths = {name: _data_file(d, name) for name in files} if isinstance(files, dict) else {}
    fmt = manifest.get("format")
    if fmt != ARTIFACT_FORMAT:
        old = isinstance(fmt, int) and fmt < ARTIFACT_FORMAT or "model_file" in manifest
        what = "an executable model file, which this gateway never opens" if old else "an unknown format"
        raise ArtifactError(
            f"{d} is format {fmt!r}, {what}; this gateway reads format {ARTIFACT_FORMAT}: "
            f"retrain it with `{RETRAIN[kind]}`"
        )
    if manifest.get("kind") != kind:
        raise ArtifactError(f"{d} holds {manifest.get('kind')!r}, not {KIND_NAMES[kind]}")
    if not isinstance(files, dict) or ARRAYS not in files:
        raise ArtifactError(f"{d}/{MANIFEST} does not list {ARRAYS} with its hash")
    data: dict[str, bytes] = {}
    for name, path in paths.items():
        data[name] = path.read_bytes()  # the bytes hashed are the bytes parsed
        if hashlib.sha256(data[name]).hexdigest() != files[name]:
            raise ArtifactError(f"{d}/{name} does not match the hash in its manifest: refusing to load it")
    try:
        arrays = load_safetensors(data[ARRAYS])
    except SafetensorError as exc:
        raise ArtifactError(f"{d}/{ARRAYS} is not a safetensors file ({exc})") from None
    return arrays, data, manifest


def _need(arrays: dict[str, np.ndarray], names: tuple[str, ...], where: str) -> None:
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ArtifactError(f"{where} lacks arrays {missing}")


def load_artifact(art_dir: str | Path) -> tuple[QualityClassifier, dict[str, Any]]:
    """Load (classifier, manifest) from a format-3 artifact directory; raises :class:`ArtifactError`
    (a ``ValueError``) for anything but a well-formed, untampered router classifier, OSError when the
    directory or its manifest cannot be read."""
    a, data, manifest = _read(art_dir, CLASSIFIER_KIND)
    _need(a, CLASSIFIER_ARRAYS, str(art_dir))
    try:
        terms = json.loads(data[VOCAB]) if VOCAB in data else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        terms = None
    if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
        raise ArtifactError(f"{art_dir}: its manifest lists no {VOCAB} holding a list of terms")
    models = manifest.get("models")
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ArtifactError(f"{art_dir}: the manifest's 'models' is not a list of names")
    n_text, n_dense, m = len(a["idf"]), len(a["dense_mean"]), len(models)
    shapes = {
        "dense_scale": (n_dense,),
        "text_coef": (n_text, m),
        "dense_coef": (n_dense, m),
        "intercept": (m,),
    }
    bad = [k for k, s in shapes.items() if a[k].shape != s] + (["vocab"] if len(terms) != n_text else [])
    if bad or any(a[k].dtype.kind != "f" for k in CLASSIFIER_ARRAYS):
        raise ArtifactError(f"{art_dir}: arrays {bad or ['dtype']} do not fit the manifest's {m} models")
    fz = TextFeaturizer(
        vocab={t: i for i, t in enumerate(terms)},
        idf=a["idf"],
        dense_mean=a["dense_mean"],
        dense_scale=a["dense_scale"],
    )
    prior, prior_coef = _group_prior(a, manifest, n_text, m, str(art_dir))
    cost = None
    if "cost_base" in a and "cost_per_char" in a:
        cost = CostModel(models=list(models), base=a["cost_base"], per_char=a["cost_per_char"])
    clf = QualityClassifier(
        featurizer=fz,
        models=list(models),
        text_coef=a["text_coef"],
        dense_coef=a["dense_coef"],
        intercept=a["intercept"],
        strong=manifest.get("strong"),
        weak=manifest.get("weak"),
        cost_model=cost,
        metadata=dict(manifest.get("train") or {}),
        prior=prior,
        prior_coef=prior_coef,
    )
    return clf, manifest


def _group_prior(
    a: dict[str, np.ndarray], manifest: dict[str, Any], n_text: int, m: int, where: str
) -> tuple[GroupPrior | None, np.ndarray | None]:
    """The classifier's group prior and its heads' weights on it, when the artifact has one (all of
    ``PRIOR_ARRAYS`` and the manifest's ``groups``), checked against the classifier's shapes."""
    present = [k for k in PRIOR_ARRAYS if k in a]
    if not present:
        return None, None
    groups = manifest.get("groups")
    if len(present) != len(PRIOR_ARRAYS) or not isinstance(groups, list):
        raise ArtifactError(
            f"{where}: an incomplete group prior (arrays {present}, groups {type(groups).__name__})"
        )
    g = len(groups)
    shapes = {
        "group_coef": (n_text, g),
        "group_intercept": (g,),
        "group_accuracy": (g, m),
        "prior_coef": (m, m),
    }
    bad = [k for k, s in shapes.items() if a[k].shape != s or a[k].dtype.kind != "f"]
    if bad or not all(isinstance(x, str) for x in groups):
        raise ArtifactError(f"{where}: group prior arrays {bad or ['groups']} do not fit its {g} groups")
    prior = GroupPrior(
        groups=list(groups),
        coef=a["group_coef"],
        intercept=a["group_intercept"],
        accuracy=a["group_accuracy"],
    )
    return prior, a["prior_coef"]


def load_verifier(art_dir: str | Path) -> tuple[AnswerVerifier, dict[str, Any]]:
    """Load (verifier, manifest), with the checks of :func:`load_artifact`. The manifest's feature names
    must be the ones this code computes, in the same order."""
    a, _, manifest = _read(art_dir, VERIFIER_KIND)
    _need(a, ("mean", "scale", "coef", "intercept"), str(art_dir))
    names = tuple(manifest.get("features") or ())
    expected = AnswerVerifier.__dataclass_fields__["feature_names"].default
    if names != expected:
        raise ArtifactError(
            f"{art_dir} was trained on other answer features; retrain it with `{RETRAIN[VERIFIER_KIND]}`"
        )
    k = len(names)
    if any(a[n].shape != (k,) for n in ("mean", "scale", "coef")) or a["intercept"].shape != (1,):
        raise ArtifactError(f"{art_dir}: arrays do not fit its {k} features")
    judges = manifest.get("judges_model")
    if not isinstance(judges, str):
        raise ArtifactError(f"{art_dir}: the manifest's 'judges_model' is not a name")
    v = AnswerVerifier(
        model=judges,
        mean=a["mean"],
        scale=a["scale"],
        coef=a["coef"],
        intercept=float(a["intercept"][0]),
        metadata=dict(manifest.get("train") or {}),
    )
    return v, manifest
