"""Group prior (inferred subject → per-model accuracy) and the character n-gram block it reads."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest

from router.char_ngrams import CharNgrams, _word_ngrams, fit_char_ngrams
from router.features import fit_featurizer
from router.group_prior import group_accuracy
from router.offline.artifacts import load_artifact, save_artifact
from router.offline.datasets import LabeledDataset
from router.offline.train import TrainConfig, train_classifier

CHEMISTRY = ["stoichiometry of the reaction", "molar mass of the compound", "oxidation state of the ion"]
HISTORY = ["treaty signed after the war", "dynasty that ruled the empire", "revolution of the colonies"]


def _subjects(n: int = 360, seed: int = 0) -> LabeledDataset:
    """Two subjects: chemistry needs the strong model (weak right 30%), history does not (weak 85%)."""
    rng = np.random.default_rng(seed)
    prompts, labels, subjects = [], [], []
    for i in range(n):
        chem = i % 2 == 0
        topic = (CHEMISTRY if chem else HISTORY)[i % 3]
        prompts.append(f"Question {i}: what do we know about the {topic} number {rng.integers(1000)}?")
        labels.append([float(rng.random() < 0.9), float(rng.random() < (0.3 if chem else 0.85))])
        subjects.append("chemistry" if chem else "history")
    return LabeledDataset("subj", prompts, ["strong-m", "weak-m"], np.array(labels), subjects=subjects)


def test_char_vector_sums_per_word_ngram_tfidf_weighted_by_sublinear_word_counts() -> None:
    cg = fit_char_ngrams(["oxidation oxidation state", "state of matter"], max_features=1000, min_df=1)
    idx, val = cg.vector("oxidation oxidation state")
    # brute force from the definition: x = Σ_w (1 + ln count_w)·u_w / sqrt(Σ_w (1 + ln count_w)²·|u_w|²)
    expect: dict[int, float] = {}
    norm2 = 0.0
    for w, count in [("oxidation", 2), ("state", 1)]:
        u = {
            cg.vocab[g]: (1 + np.log(m)) * cg.idf[cg.vocab[g]]
            for g, m in Counter(_word_ngrams(w, 2, 5)).items()
        }
        s = 1 + np.log(count)
        norm2 += s * s * sum(v * v for v in u.values())
        for j, v in u.items():
            expect[j] = expect.get(j, 0.0) + s * v
    got = dict(zip(idx.tolist(), val.tolist(), strict=True))
    assert got == pytest.approx({k: v / np.sqrt(norm2) for k, v in expect.items()})


def test_char_ngram_word_cache_is_not_pickled_and_scores_stay_identical() -> None:
    cg = fit_char_ngrams(["alpha beta", "beta gamma"], max_features=100, min_df=1)
    before = cg.vector("alpha beta gamma")
    assert cg._rows
    clone: CharNgrams = pickle.loads(pickle.dumps(cg))
    assert clone._rows == {} and clone._words == []
    after = clone.vector("alpha beta gamma")
    assert np.array_equal(before[0], after[0]) and np.allclose(before[1], after[1])


def test_chi2_selection_keeps_group_evidence_over_frequent_ngrams() -> None:
    texts = [f"the question {i} about stoichiometry" for i in range(20)]
    texts += [f"the question {i} about monarchy" for i in range(20)]
    labels = ["chem"] * 20 + ["hist"] * 20
    by_df = fit_char_ngrams(texts, max_features=20, min_df=2)
    by_chi2 = fit_char_ngrams(texts, max_features=20, min_df=2, labels=labels)
    assert " th" in by_df.vocab and "stoi" not in by_df.vocab  # shared by every text
    assert all(g in " stoichiometry " or g in " monarchy " for g in by_chi2.vocab)


def test_featurizer_char_block_fast_path_matches_batch() -> None:
    ds = _subjects(40)
    fz = fit_featurizer(ds.prompts, char_features=500)
    _, xc, _ = fz.blocks(fz.featurize_many(ds.prompts[:4]))
    f = fz.featurize(ds.prompts[2])
    idx, val = fz.char.vector(ds.prompts[2])
    assert xc.shape[1] == 500 and f.char is not None and f.char.words
    assert np.allclose(xc.getrow(2).toarray().ravel()[idx], val)


def test_group_prior_per_word_cached_logits_match_the_batch_product() -> None:
    ds = _subjects(120)
    clf = train_classifier(
        ds, TrainConfig(gb_iter=10, n_folds=3, group_char_features=300, group_char_min_groups=2)
    )
    gp = clf.group_prior
    assert gp is not None and gp.char is clf.featurizer.char
    feats = clf.featurizer.featurize_many(ds.prompts[:30])
    xw, xc, _ = clf.featurizer.blocks(feats)
    online = np.array([gp.model_prior(f) for f in feats])
    assert np.allclose(online, gp.model_prior_many(xw, xc), atol=1e-5)
    assert gp._filled.any()  # the per-word logits were memoised ...
    assert not len(pickle.loads(pickle.dumps(gp))._filled)  # ... and are not part of the artifact


def test_char_memo_starts_over_when_full_and_scores_stay_exact() -> None:
    ds = _subjects(120)
    clf = train_classifier(
        ds, TrainConfig(gb_iter=10, n_folds=3, group_char_features=300, group_char_min_groups=2)
    )
    prompts = ds.prompts[:20]
    expect = [clf.group_prior.model_prior(clf.features(p)) for p in prompts]
    small = pickle.loads(pickle.dumps(clf))
    gp, ch = small.group_prior, small.featurizer.char
    assert gp is not None and ch is not None and gp.char is ch
    ch.cache_size = 12  # fewer rows than the words of a few prompts: the memo restarts repeatedly
    stale = small.features(prompts[0])
    got = [gp.model_prior(small.features(p)) for p in prompts]
    assert ch.generation > 0
    assert np.allclose(got, expect, atol=1e-6)
    assert np.allclose(gp.model_prior(stale), expect[0], atol=1e-6)  # featurised in an older generation


def test_char_block_records_the_training_words_most_frequent_first() -> None:
    cg = fit_char_ngrams(["qq oxidation state", "State of matter", "state x"], max_features=3, min_df=2)
    assert cg.known_words[0] == "state"  # in all three prompts, lower-cased as the block reads them
    assert set(cg.known_words) == {"qq", "oxidation", "state", "of", "matter", "x"}
    assert pickle.loads(pickle.dumps(cg)).known_words == cg.known_words  # part of the artifact


def test_loading_an_artifact_prefills_the_training_words_and_scores_stay_identical(tmp_path) -> None:  # noqa: ANN001
    ds = _subjects(120)
    clf = train_classifier(
        ds, TrainConfig(gb_iter=10, n_folds=3, group_char_features=300, group_char_min_groups=2)
    )
    save_artifact(clf, tmp_path / "a", {"data": "test"})
    warm, _ = load_artifact(tmp_path / "a")
    cold, _ = load_artifact(tmp_path / "a", warm_up=False)
    ch, gp = warm.featurizer.char, warm.group_prior
    assert ch is not None and gp is not None and ch.known_words
    assert set(ch._rows) == set(ch.known_words)
    with_ngrams = [w for w in ch.known_words if any(g in ch.vocab for g in _word_ngrams(w, 2, 5))]
    assert 0 < gp._filled.sum() == len(with_ngrams)
    assert not cold.featurizer.char._rows  # type: ignore[union-attr]
    prompts = ds.prompts[:10] + ["an unseen prompt about stoichiometry and treaties"]
    for p in prompts:  # the prefilled rows give the same numbers as rows built on demand
        assert np.allclose(
            warm.predict_array(warm.features(p)), cold.predict_array(cold.features(p)), atol=1e-6
        )
    before = len(ch._rows)
    warm.predict_array(warm.features(ds.prompts[0]))
    assert len(ch._rows) == before  # a training prompt brings no new word


def test_group_accuracy_shrinks_small_groups_toward_the_overall_rate_and_skips_unknown() -> None:
    labels = np.array([[1.0], [1.0], [0.0], [np.nan]])
    acc = group_accuracy(labels, ["a", "a", "b", "b"], ["a", "b"], prior_n=1.0)
    overall = 2 / 3
    assert acc[0, 0] == pytest.approx((2 + overall) / 3)
    assert acc[1, 0] == pytest.approx((0 + overall) / 2)  # the NaN row counts for nothing


def test_subject_prior_is_inferred_from_text_and_drives_the_gap(tmp_path) -> None:  # noqa: ANN001
    ds = _subjects()
    clf = train_classifier(
        ds, TrainConfig(gb_iter=30, n_folds=3, group_char_features=2000, group_char_min_groups=2)
    )
    gp = clf.group_prior
    assert gp is not None and gp.groups == ["chemistry", "history"] and len(gp.char_coef)
    chem = clf.features("Question 9999: what do we know about the molar mass of the compound number 5?")
    hist = clf.features("Question 9998: what do we know about the treaty signed after the war number 5?")
    assert gp.group_probs(chem)[0] > 0.9 and gp.group_probs(hist)[1] > 0.9
    weak = clf.models.index("weak-m")
    assert gp.model_prior(chem)[weak] < 0.45 < 0.75 < gp.model_prior(hist)[weak]
    assert clf.gap_score(clf.predict(chem)) > clf.gap_score(clf.predict(hist)) + 0.3
    # the artifact round trip keeps the prior (and its char block) and scores identically
    save_artifact(clf, tmp_path / "art")
    loaded, _ = load_artifact(tmp_path / "art")
    p = "Question 5: what do we know about the oxidation state of the ion number 3?"
    assert loaded.predict(p) == pytest.approx(clf.predict(p))


def test_many_model_probabilities_shrink_toward_the_task_prior_by_a_learned_weight() -> None:
    rng = np.random.default_rng(1)
    prompts, labels, tasks = [], [], []
    for i in range(300):
        code = i % 2 == 0
        prompts.append(
            f"Write a python function number {i}" if code else f"Pick the right option {i}: A or B"
        )
        # three models whose accuracy depends only on the task: per-prompt text is pure noise
        acc = [0.8, 0.3, 0.5] if code else [0.4, 0.9, 0.5]
        labels.append([float(rng.random() < a) for a in acc])
        tasks.append("code" if code else "choice")
    ds = LabeledDataset("tasks", prompts, ["m1", "m2", "m3"], np.array(labels), tasks=tasks)
    clf = train_classifier(ds, TrainConfig(gb_iter=20, n_folds=3, group_char_features=500))
    assert clf.prior_weight is not None and clf.prior_weight.max() > 0
    p = clf.predict("Write a python function number 7777")
    assert max(p, key=p.get) == "m1"
