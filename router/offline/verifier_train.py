"""Training and offline evaluation of the answer verifier (router/verifier.py).

Reads logged answers with their correctness labels from the routing datasets. RouteLLM files carry
``<model>_response`` columns, RouterBench files ``<model>|model_response``; the router's own dataset
reader keeps answers out on purpose (router/offline/datasets.py), so they are read here and only here.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router.offline.datasets import _parse_label, _raise_csv_limit
from router.verifier import AnswerVerifier

__all__ = ["AnswerSet", "read_answers", "fit_verifier", "oof_scores", "cross_validate", "train_verifier"]


@dataclass
class AnswerSet:
    """One model's answers: prompt, answer, 1/0 acceptable; ``other`` is a second model's label on the
    same prompt (the strong model, for a two-model cascade's escalation curve), NaN when absent."""

    model: str
    prompts: list[str]
    answers: list[str]
    labels: np.ndarray
    other: np.ndarray


def _answer_column(header: Sequence[str], model: str) -> str | None:
    for name in (f"{model}_response", f"{model}|model_response"):
        if name in header:
            return name
    return None


def read_answers(paths: Sequence[str | Path], model: str, other: str | None = None) -> AnswerSet:
    """``model``'s labeled answers from every file that has them (rows with no label or no answer are
    skipped); ``other``: a second model's labels on the same rows."""
    _raise_csv_limit()
    prompts: list[str] = []
    answers: list[str] = []
    labels: list[float] = []
    others: list[float] = []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            col = _answer_column(header, model)
            if col is None or model not in header:
                continue
            for row in reader:
                y = _parse_label(row[model])
                answer = row[col]
                if np.isnan(y) or answer is None:
                    continue
                prompts.append(row["prompt"])
                answers.append(answer)
                labels.append(y)
                others.append(_parse_label(row[other]) if other and other in row else float("nan"))
    if not prompts:
        raise ValueError(f"no labeled answers of {model!r} in {[str(p) for p in paths]}")
    return AnswerSet(model, prompts, answers, np.array(labels), np.array(others))


def _design(data: AnswerSet) -> np.ndarray:
    return np.vstack(
        [AnswerVerifier.raw_features(p, a) for p, a in zip(data.prompts, data.answers, strict=True)]
    )


def fit_verifier(x: np.ndarray, y: np.ndarray, model: str, c: float = 1.0, seed: int = 0) -> AnswerVerifier:
    """Standardise and fit an L2 logistic regression (scikit-learn, offline only)."""
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    lr = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit((x - mean) / scale, y)
    return AnswerVerifier(model, mean, scale, lr.coef_[0].copy(), float(lr.intercept_[0]))


def oof_scores(
    data: AnswerSet, folds: int = 5, repeats: int = 3, c: float = 1.0, x: np.ndarray | None = None
) -> np.ndarray:
    """Out-of-fold p(acceptable) of every answer, averaged over ``repeats`` shuffled k-fold splits.
    ``x``: the answers' raw features when the caller already has them."""
    from sklearn.model_selection import StratifiedKFold

    x, y = (_design(data) if x is None else x), data.labels
    oof = np.zeros(len(y))
    for r in range(repeats):
        for tr, te in StratifiedKFold(folds, shuffle=True, random_state=r).split(x, y):
            oof[te] += fit_verifier(x[tr], y[tr], data.model, c).probability(x[te]) / repeats
    return oof


def cross_validate(
    data: AnswerSet, folds: int = 5, repeats: int = 3, c: float = 1.0, x: np.ndarray | None = None
) -> dict[str, float]:
    """Out-of-fold AUC of the verifier and, when ``other`` labels exist, the escalation curve's
    APGR / CPT: escalate the answers the verifier trusts least to the other model."""
    from sklearn.metrics import roc_auc_score

    from router.metrics import two_model_report

    y = data.labels
    oof = oof_scores(data, folds, repeats, c, x)
    out = {"n": float(len(y)), "acceptable_share": float(y.mean()), "auc": float(roc_auc_score(y, oof))}
    # a policy's escalation threshold for a target share of escalated answers (escalate below it)
    for share in (0.1, 0.2, 0.3, 0.5):
        out[f"threshold_escalating_{int(share * 100)}pct"] = float(np.quantile(oof, share))
    if not np.isnan(data.other).any():
        rep = two_model_report(-oof, data.other, y)
        out |= {
            "escalation_apgr": rep["apgr"],
            "escalation_cpt50": rep["cpt50"],
            "escalation_cpt80": rep["cpt80"],
        }
    return out


def train_verifier(data: AnswerSet, c: float = 1.0, folds: int = 5) -> AnswerVerifier:
    """Cross-validated metrics (kept in ``metadata``), then the verifier fitted on all of ``data``."""
    smaller_class = int(min(data.labels.sum(), len(data.labels) - data.labels.sum()))
    folds = min(folds, smaller_class)  # stratified folds need that many answers of each kind
    x = _design(data)  # featurised once, for the folds and the final fit
    metrics = cross_validate(data, folds=folds, c=c, x=x) if folds >= 2 else {}
    v = fit_verifier(x, data.labels, data.model, c)
    v.metadata = {"cv": metrics, "n": len(data.labels), "C": c}
    return v
