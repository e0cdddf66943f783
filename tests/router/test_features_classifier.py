"""Featuriser, classifier, selectors, artifacts (tiny synthetic data)."""

from __future__ import annotations

import numpy as np
import pytest

from router.artifacts import ARTIFACT_FORMAT, load_artifact
from router.classifier import (
    best_tradeoff,
    calibrate_gap_threshold,
    calibrate_quality_threshold,
    cheapest_above,
)
from router.features import _NUM, _numbers, fit_featurizer, normalize_prompt
from router.offline.artifacts import save_artifact
from router.offline.datasets import LabeledDataset
from router.offline.train import TrainConfig, train_classifier
from tests.support.routing_data import toy_routing_dataset


def test_normalize_prompt_routerbench_list() -> None:
    assert normalize_prompt("['Hello', 'world']") == "Hello\nworld"
    assert normalize_prompt("[not a list") == "[not a list"


def test_featurizer_fast_path_matches_batch() -> None:
    ds = toy_routing_dataset(60)
    fz = fit_featurizer(ds.prompts)
    x, dense = fz.matrices(ds.prompts[:5])
    f = fz.featurize(ds.prompts[3])
    row = x.getrow(3).toarray().ravel()
    assert np.allclose(row[f.text_idx], f.text_val)
    assert np.allclose(dense[3], f.dense)
    assert np.linalg.norm(f.text_val) == pytest.approx(1.0)


def test_classifier_learns_and_gap_is_consistent(tmp_path) -> None:  # noqa: ANN001
    ds = toy_routing_dataset(400)
    clf = train_classifier(ds, TrainConfig(), strong="strong-m", weak="weak-m")
    math_p = clf.predict("Compute 12 * 34 + 5 and explain each step of the calculation.")
    triv_p = clf.predict("What is the capital city of country number 7? Answer briefly.")
    assert set(math_p) == {"strong-m", "weak-m"}
    assert all(0.0 <= v <= 1.0 for v in math_p.values())
    assert clf.gap_score(math_p) > clf.gap_score(triv_p) + 0.2
    # artifact round trip gives identical scores
    save_artifact(clf, tmp_path / "art", data_hashes={"toy": "x"})
    clf2, manifest = load_artifact(tmp_path / "art")
    assert manifest["models"] == ["strong-m", "weak-m"] and manifest["format"] == ARTIFACT_FORMAT
    assert clf2.predict("Compute 1 * 2") == clf.predict("Compute 1 * 2")
    (tmp_path / "art" / "arrays.safetensors").write_bytes(b"tampered")
    with pytest.raises(ValueError):
        load_artifact(tmp_path / "art")


def test_artifact_of_an_older_format_is_refused_with_a_retrain_hint(tmp_path) -> None:  # noqa: ANN001
    import json

    clf = train_classifier(toy_routing_dataset(120), TrainConfig(), strong="strong-m", weak="weak-m")
    save_artifact(clf, tmp_path / "art")
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    manifest["format"] = 1
    (tmp_path / "art" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="retrain"):
        load_artifact(tmp_path / "art")


@pytest.mark.parametrize(
    "text",
    [
        "pay $1,234.50 in 3. steps",
        ".5 and 1..2 and 1,2,3, then 4.",
        "no digits here",
        "",
        "١٢٣ and ２ and 7",
        "x9y 10.0.1",
    ],
)
def test_number_extraction_matches_the_regex_on_any_text(text: str) -> None:
    assert _numbers(text) == _NUM.findall(text)


def test_selectors_and_calibration() -> None:
    probs = {"cheap": 0.6, "mid": 0.8, "big": 0.95}
    costs = {"cheap": 1.0, "mid": 2.0, "big": 10.0}
    assert cheapest_above(probs, costs, 0.7) == "mid"
    assert cheapest_above(probs, costs, 0.99) == "big"  # none clears: most likely model
    assert best_tradeoff(probs, costs, 0.0) == "big"
    assert best_tradeoff(probs, costs, 0.1) == "mid"
    gaps = np.linspace(-1, 1, 101)
    t = calibrate_gap_threshold(gaps, 0.3)
    assert np.mean(gaps >= t) == pytest.approx(0.3, abs=0.011)
    rng = np.random.default_rng(0)
    p = rng.random((500, 3))
    c = np.tile([1.0, 2.0, 3.0], (500, 1))
    th = calibrate_quality_threshold(p, c, strong_index=2, target_strong_share=0.25)
    names = ["a", "b", "c"]
    choice = [
        cheapest_above(dict(zip(names, row, strict=True)), dict(zip(names, [1.0, 2.0, 3.0], strict=True)), th)
        for row in p
    ]
    assert np.mean([ch == "c" for ch in choice]) == pytest.approx(0.25, abs=0.03)


def _subjects(n: int = 300, seed: int = 0) -> LabeledDataset:
    """Three subjects with their own words; the weak model fails algebra far more often than the rest."""
    rng = np.random.default_rng(seed)
    rates = {"algebra": (0.9, 0.3), "history": (0.9, 0.85), "law": (0.75, 0.65)}
    words = {
        "algebra": "solve the equation for x",
        "history": "in which year did the treaty",
        "law": "under the statute a court",
    }
    prompts, labels, subjects = [], [], []
    for i in range(n):
        s = list(rates)[i % 3]
        prompts.append(f"{words[s]} number {rng.integers(1000)} item {i}")
        labels.append([float(rng.random() < rates[s][0]), float(rng.random() < rates[s][1])])
        subjects.append(s)
    return LabeledDataset("subj", prompts, ["strong-m", "weak-m"], np.array(labels), subjects=subjects)


def test_a_group_prior_is_learned_from_the_subjects_and_round_trips(tmp_path) -> None:  # noqa: ANN001
    ds = _subjects()
    clf = train_classifier(ds, TrainConfig())
    assert clf.prior is not None and clf.prior_coef is not None
    assert clf.prior.groups == ["algebra", "history", "law"]
    f = clf.features("solve the equation for x number 5 item 9")
    assert int(np.argmax(clf.prior.posterior(f))) == 0  # the subject is read from the words
    acc = clf.prior.accuracy  # (group, model): the weak model's algebra rate is the low one
    assert acc[0, 1] < acc[1, 1] - 0.3 and acc[0, 0] > 0.8
    assert clf.prior_coef.shape == (2, 2)
    save_artifact(clf, tmp_path / "art")
    clf2, manifest = load_artifact(tmp_path / "art")
    assert manifest["groups"] == ["algebra", "history", "law"]
    prompts = ["solve the equation for x number 1", "in which year did the treaty", "", "unrelated words"]
    batch = clf2.predict_many(prompts)
    assert np.allclose(batch, clf.predict_many(prompts))
    assert np.allclose(batch, [list(clf2.predict(p).values()) for p in prompts])
    assert train_classifier(ds, TrainConfig(group_prior=False)).prior is None
