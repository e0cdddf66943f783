"""The router's featuriser: one implementation, the same numbers as scikit-learn's TF-IDF."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from router.features import clip_prompt, fit_featurizer, normalize_prompt, terms

PROMPTS = [
    "Compute 12 * 34 + 5 and explain each step of the calculation.",
    "What is the capital city of France? Answer briefly.",
    "['Which of the following is NOT a noble gas?', '(A) Neon\\n(B) Argon\\n(C) Chlorine\\n(D) Xenon']",
    "C'est déjà l'été: 3.5 % of x-y, (a) or b?",
    "def f(x):\n    return x + 1\n# write a function that adds one " * 40,
    "the the the capital capital city",
]


def test_decision_time_tfidf_equals_sklearn_transform() -> None:
    fz = fit_featurizer(PROMPTS, min_df=1)
    texts = [clip_prompt(normalize_prompt(p)) for p in PROMPTS]
    vec = TfidfVectorizer(analyzer=terms, min_df=1, sublinear_tf=True).fit(texts)
    expect = vec.transform(texts + ["unseen words only", ""]).toarray()
    x, dense = fz.matrices(PROMPTS + ["unseen words only", ""])
    cols = [fz.vocab[t] for t in vec.get_feature_names_out()]
    assert np.allclose(x.toarray()[:, cols], expect, atol=1e-12)
    for i, p in enumerate(PROMPTS):
        f = fz.featurize(p)
        assert np.linalg.norm(f.text_val) == pytest.approx(1.0)
        assert np.allclose(dense[i], f.dense)
    assert fz.featurize("unseen words only").text_idx.size == 0


def test_without_dense_features_the_block_is_empty() -> None:
    fz = fit_featurizer(PROMPTS, min_df=1, dense=False)
    f = fz.featurize(PROMPTS[0])
    assert fz.n_dense == 0 and f.dense.shape == (0,) and f.text_idx.size > 0
