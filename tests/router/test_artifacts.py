"""Router and verifier artifacts are data: arrays plus a manifest whose hashes are checked on load.

A tampered file, a pickled (joblib) artifact, and a manifest naming files outside the artifact's folder
are all refused; nothing in them is ever unpickled.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from router.artifacts import ARRAYS, VOCAB, ArtifactError, ArtifactPathError, load_artifact, load_verifier
from router.features import DENSE_FEATURE_NAMES
from router.offline.artifacts import save_artifact, save_verifier
from router.offline.datasets import LabeledDataset
from router.offline.train import TrainConfig, train_classifier
from router.verifier import ANSWER_FEATURE_NAMES, AnswerVerifier
from tests.support.routing_data import toy_routing_dataset


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clf")
    save_artifact(train_classifier(toy_routing_dataset(200), TrainConfig()), out)
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


class _Marker:
    """Unpickling this object creates a file: proof that a loader executed code from the artifact."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (os.mkdir, (str(self.path),))


def test_an_artifact_round_trips_as_arrays_and_a_manifest_with_its_hash(classifier_dir: Path) -> None:
    manifest = json.loads((classifier_dir / "manifest.json").read_text())
    assert sorted(p.name for p in classifier_dir.iterdir()) == sorted([ARRAYS, VOCAB, "manifest.json"])
    assert set(manifest["files"]) == {ARRAYS, VOCAB}
    assert manifest["files"][ARRAYS] == _sha256(classifier_dir / ARRAYS)
    clf, _ = load_artifact(classifier_dir)
    fresh = train_classifier(toy_routing_dataset(200), TrainConfig())
    prompts = ["Compute 12 * 34 + 5 and explain each step.", "What is the capital city of 7?", ""]
    assert np.array_equal(clf.predict_many(prompts), fresh.predict_many(prompts))
    assert clf.predict(prompts[0]) == fresh.predict(prompts[0])


def test_a_manifest_hash_mismatch_is_refused_clearly(classifier_dir: Path, tmp_path: Path) -> None:
    art = _copy(classifier_dir, tmp_path / "art")
    arrays = load_file(art / ARRAYS)
    arrays["intercept"] = arrays["intercept"] + 5.0  # a well-formed file with other numbers
    save_file(arrays, art / ARRAYS)
    with pytest.raises(ArtifactError, match="does not match the hash in its manifest: refusing to load it"):
        load_artifact(art)
    art = _copy(classifier_dir, tmp_path / "art2")
    (art / VOCAB).write_text((art / VOCAB).read_text().replace('"capital"', '"kapital"'))
    with pytest.raises(ArtifactError, match=f"{VOCAB} does not match the hash"):
        load_artifact(art)


def test_a_joblib_artifact_is_refused_naming_the_command_that_replaces_it(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.joblib").write_bytes(pickle.dumps(_Marker(marker)))
    (old / "manifest.json").write_text(
        json.dumps(
            {
                "format": 2,
                "kind": "hybridgate.router.QualityClassifier",
                "model_file": "model.joblib",
            }
        )
    )
    with pytest.raises(
        ArtifactError, match=r"format 2, an executable model file.*`hybridgate router train --data"
    ):
        load_artifact(old)
    with pytest.raises(ArtifactError, match="is a file"):
        load_artifact(old / "model.joblib")
    # a current-format manifest whose data file is the pickle, hash and all: parsed as data, refused
    (old / ARRAYS).write_bytes((old / "model.joblib").read_bytes())
    (old / "manifest.json").write_text(
        json.dumps(
            {
                "format": 3,
                "kind": "hybridgate.router.QualityClassifier",
                "models": ["a"],
                "files": {ARRAYS: _sha256(old / ARRAYS)},
            }
        )
    )
    with pytest.raises(ArtifactError, match="not a safetensors file"):
        load_artifact(old)
    for loader in (load_verifier, load_artifact):  # the verifier loader too
        manifest = json.loads((old / "manifest.json").read_text())
        manifest["kind"] = "hybridgate.router.AnswerVerifier" if loader is load_verifier else manifest["kind"]
        (old / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ArtifactError):
            loader(old)
    assert not marker.exists()


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["/etc/hostname", "../outside.json", f"sub/{ARRAYS}", "..", ""])
def test_a_manifest_naming_a_file_outside_the_artifact_folder_is_refused(
    classifier_dir: Path, tmp_path: Path, name: str
) -> None:
    art = _copy(classifier_dir, tmp_path / "art")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"] = {**manifest["files"], name: "0" * 64}
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactPathError):
        load_artifact(art)


def test_a_data_file_that_is_a_symlink_out_of_the_folder_is_refused(
    classifier_dir: Path, tmp_path: Path
) -> None:
    art = _copy(classifier_dir, tmp_path / "art")
    outside = tmp_path / "elsewhere.safetensors"
    (art / ARRAYS).rename(outside)
    (art / ARRAYS).symlink_to(outside)
    with pytest.raises(ArtifactPathError):
        load_artifact(art)


def test_verifier_artifacts_are_arrays_with_a_checked_hash(tmp_path: Path) -> None:
    k = len(ANSWER_FEATURE_NAMES) + len(DENSE_FEATURE_NAMES)
    rng = np.random.default_rng(0)
    v = AnswerVerifier(
        model="m",
        mean=rng.normal(size=k),
        scale=rng.random(k) + 0.5,
        coef=rng.normal(size=k),
        intercept=0.25,
        metadata={"cv": {"auc": 0.9}},
    )
    save_verifier(v, tmp_path / "ver")
    loaded, manifest = load_verifier(tmp_path / "ver")
    assert manifest["judges_model"] == "m" and manifest["metrics"] == {"auc": 0.9}
    assert loaded.p_ok("Ann has 10 and 20.", "10 + 20 = 35.") == v.p_ok("Ann has 10 and 20.", "10 + 20 = 35.")
    with pytest.raises(ArtifactError, match="not a router classifier"):
        load_artifact(tmp_path / "ver")
    save_file(
        {"mean": v.mean, "scale": v.scale, "coef": -v.coef, "intercept": np.array([0.25])},
        tmp_path / "ver" / ARRAYS,
    )
    with pytest.raises(ArtifactError, match="does not match the hash"):
        load_verifier(tmp_path / "ver")


def test_an_incomplete_group_prior_is_refused(tmp_path: Path) -> None:
    prompts = [f"{w} question {i}" for i in range(60) for w in ("algebra", "history")]
    labels = np.array([[1.0, float(i % 3 == 0)] for i in range(len(prompts))])
    subjects = [p.split()[0] for p in prompts]
    ds = LabeledDataset("subj", prompts, ["strong-m", "weak-m"], labels, subjects=subjects)
    art = tmp_path / "art"
    save_artifact(train_classifier(ds, TrainConfig()), art)
    arrays = load_file(art / ARRAYS)
    assert {"group_coef", "group_intercept", "group_accuracy", "prior_coef"} <= set(arrays)
    del arrays["prior_coef"]
    save_file(arrays, art / ARRAYS)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"][ARRAYS] = _sha256(art / ARRAYS)  # consistent hashes: the arrays themselves are wrong
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="incomplete group prior"):
        load_artifact(art)
