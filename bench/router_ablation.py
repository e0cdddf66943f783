"""Cross-validated ablation of the learned router's components on shared/data/routing.

Every prompt is held out once: folds are stratified on the subject or task only (``holdout_strata``,
the same fold assignment as ``bench/routing_eval.py --folds K``), each fold is scored by a classifier
trained on the other folds with ``TrainConfig(**overrides)``. Reports, per configuration:

* MMLU and GSM8K (two models): APGR of the out-of-fold score ``p_strong − p_weak`` over all prompts, and
  the spread of the per-fold APGRs (their standard deviation, a noise yardstick).
* RouterBench (eleven models with costs): AIQ of ``argmax p − λ·ĉ`` over a λ sweep on the out-of-fold
  probabilities (each fold's costs predicted by its own cost model), and the per-fold AIQ spread.

Usage: ``python bench/router_ablation.py --config NAME='{"field": value}' ... [--folds 5] [--json OUT]``
(a configuration's JSON holds ``TrainConfig`` overrides; ``base='{}'`` is the trainer's defaults).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router import metrics as M  # noqa: E402
from router.offline.datasets import (  # noqa: E402
    holdout_strata,
    read_csv,
    read_many,
    routellm_path,
    routerbench_paths,
)
from router.offline.train import TrainConfig, train_classifier  # noqa: E402

LAMBDAS = np.r_[0.0, np.geomspace(1.0, 1e5, 80)]


def fold_assignment(strata: list[str], folds: int, seed: int) -> np.ndarray:
    """Fold of every row, stratified on ``strata`` (as ``bench/routing_eval.py --folds``)."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(strata), dtype=int)
    arr = np.asarray(strata)
    for key in sorted(set(strata)):
        idx = np.flatnonzero(arr == key)
        fold_of[rng.permutation(idx)] = np.arange(len(idx)) % folds
    return fold_of


def oof_predictions(ds, overrides: dict, folds: int, seed: int):  # noqa: ANN001, ANN201
    """(out-of-fold probabilities (n, M), out-of-fold predicted costs (n, M) or None, fold of each row)."""
    fold_of = fold_assignment(holdout_strata(ds), folds, seed)
    probs = np.zeros((len(ds), len(ds.models)))
    costs = np.zeros_like(probs) if ds.costs is not None else None
    for k in range(folds):
        tr, te = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
        clf = train_classifier(ds.subset(tr), TrainConfig(seed=seed, **overrides))
        cols = [clf.models.index(m) for m in ds.models]
        prompts = [ds.prompts[i] for i in te]
        probs[te] = clf.predict_many(prompts)[:, cols]
        if costs is not None and clf.cost_model is not None:
            costs[te] = np.vstack([clf.cost_model.predict(len(p)) for p in prompts])[:, cols]
    return probs, costs, fold_of


def two_model(which: str, overrides: dict, folds: int, seed: int) -> dict:
    ds = read_csv(routellm_path(which))
    strong, weak = ds.strong_weak  # type: ignore[misc]
    probs, _, fold_of = oof_predictions(ds, overrides, folds, seed)
    i_s, i_w = ds.models.index(strong), ds.models.index(weak)
    score = probs[:, i_s] - probs[:, i_w]
    st, wk = ds.labels[:, i_s], ds.labels[:, i_w]
    per_fold = [
        M.apgr(M.routing_curve(score[fold_of == k], st[fold_of == k], wk[fold_of == k])) for k in range(folds)
    ]
    return {
        "apgr": round(M.apgr(M.routing_curve(score, st, wk)), 4),
        "apgr_fold_std": round(float(np.std(per_fold)), 4),
        "apgr_per_fold": [round(v, 4) for v in per_fold],
    }


def routerbench(overrides: dict, folds: int, seed: int) -> dict:
    ds = read_many(routerbench_paths())
    probs, costs, fold_of = oof_predictions(ds, overrides, folds, seed)
    assert costs is not None and ds.costs is not None
    mc, _ = M.single_model_points(ds.labels, ds.costs)
    crange = (float(np.nanmin(mc)), float(np.nanmax(mc)))

    def aiq(rows: np.ndarray) -> float:
        c = M.tradeoff_sweep(probs[rows], costs[rows], ds.labels[rows], ds.costs[rows], LAMBDAS)
        return M.aiq(c.cost, c.quality, crange)

    per_fold = [aiq(fold_of == k) for k in range(folds)]
    return {
        "aiq": round(aiq(np.ones(len(ds), dtype=bool)), 4),
        "aiq_fold_std": round(float(np.std(per_fold)), 4),
        "aiq_per_fold": [round(v, 4) for v in per_fold],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", default=[], help="NAME=JSON of TrainConfig overrides")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="mmlu,gsm8k,routerbench")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    configs = dict(c.split("=", 1) for c in (a.config or ["base={}"]))
    res: dict = {
        "machine": f"{platform.machine()} {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "folds": a.folds,
        "seed": a.seed,
        "configs": {},
    }
    for name, js in configs.items():
        overrides = json.loads(js)
        row: dict = {"overrides": overrides}
        for src in a.only.split(","):
            t0 = time.perf_counter()
            row[src] = (
                routerbench(overrides, a.folds, a.seed)
                if src == "routerbench"
                else two_model(src, overrides, a.folds, a.seed)
            )
            row[src]["wall_seconds"] = round(time.perf_counter() - t0, 1)
            print(name, src, json.dumps(row[src]), file=sys.stderr, flush=True)
        res["configs"][name] = row
        if a.json:
            a.json.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
