"""``hybridgate router {train,score,eval}`` entry points (also ``python -m router.offline.cli ...``).

Each ``*_main(argv) -> int`` parses its own arguments with argparse so the gateway's console script
can dispatch to them unchanged.

* ``train --data CSV... --out DIR`` (or ``--from-db URL``): fit a :class:`QualityClassifier` and write a
  versioned artifact directory.
* ``score --artifact DIR --prompts IN.jsonl --out OUT.jsonl``: input lines ``{"id", "prompt"}``, output
  lines ``{"id", "scores": {model: p_acceptable}}`` with model names exactly as in the training data.
* ``eval --artifact DIR --data CSV...``: labeled data → cost–quality curve, APGR, CPT(50%), CPT(80%)
  (two-model data) / AIQ (multi-model data with costs);
  ``eval --logs LOGS.jsonl --artifact DIR``: off-policy estimate (IPS, SNIPS, DR) of the artifact's policy
  from logged traffic lines ``{"prompt", "action", "propensity", "reward"}``: ``action`` is the model the
  logging policy chose and ``propensity`` its probability of choosing it, ``reward`` what the request got
  (after a fallback the answer came from another model; the credit still goes to the chosen one).
* ``train-verifier --data CSV... --model NAME --out DIR``: a cascade's answer verifier
  (router/verifier.py) from one model's labeled answers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["train_main", "score_main", "eval_main", "train_verifier_main", "main"]


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybridgate router train", description="Train the quality classifier.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--data", nargs="+", type=Path, help="labeled CSV files (routellm or routerbench format)"
    )
    src.add_argument(
        "--from-db", dest="from_db", help="SQLAlchemy URL of the gateway DB (feedback + requests)"
    )
    p.add_argument("--out", required=True, type=Path, help="artifact directory to write")
    p.add_argument("--version", default=None, help="artifact version string (default: creation time)")
    p.add_argument("--C", type=float, default=None, help="inverse L2 strength of the linear heads")
    p.add_argument("--dense", action="store_true", help="add the structure-feature block to the TF-IDF")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="at most this many rows (from-db)")
    return p


def train_main(argv: list[str]) -> int:
    """Train from labeled CSVs or the feedback DB and save an artifact. Returns a process exit code."""
    from router.offline.artifacts import save_artifact
    from router.offline.datasets import read_many
    from router.offline.train import TrainConfig, train_classifier

    a = _train_parser().parse_args(argv)
    if a.data:
        ds = read_many(a.data)
    else:
        from router.offline.feedback_db import read_feedback

        ds = read_feedback(a.from_db, limit=a.limit)
    if len(ds) == 0:
        print("no training rows", file=sys.stderr)
        return 2
    cfg = TrainConfig(seed=a.seed)
    if a.C is not None:
        cfg.C = a.C
    if a.dense:
        cfg.dense = True
    if len(ds) < 200:  # a term seen once is all the evidence small data has
        cfg.min_df = 1
    clf = train_classifier(ds, cfg)
    metrics = {"n_train": len(ds)}
    save_artifact(clf, a.out, data_hashes=ds.source_hashes, metrics=metrics, version=a.version)
    print(json.dumps({"artifact": str(a.out), "models": clf.models, "n_train": len(ds)}))
    return 0


def _score_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybridgate router score", description="Score prompts with an artifact.")
    p.add_argument("--artifact", required=True, type=Path)
    p.add_argument("--prompts", required=True, type=Path, help='JSONL lines {"id": str, "prompt": str}')
    p.add_argument("--out", required=True, type=Path, help='JSONL lines {"id": str, "scores": {model: p}}')
    return p


def score_main(argv: list[str]) -> int:
    """Score a JSONL of prompts; one output line per input line, same order."""
    from router.artifacts import load_artifact

    a = _score_parser().parse_args(argv)
    clf, _ = load_artifact(a.artifact)
    n = 0
    with open(a.prompts, encoding="utf-8") as fin, open(a.out, "w", encoding="utf-8") as fout:
        for line in fin:
            if not line.strip():
                continue
            rec = json.loads(line)
            scores = clf.predict(str(rec.get("prompt") or ""))
            fout.write(json.dumps({"id": rec.get("id"), "scores": scores}) + "\n")
            n += 1
    print(json.dumps({"scored": n, "out": str(a.out)}))
    return 0


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybridgate router eval", description="Evaluate an artifact.")
    p.add_argument("--artifact", required=True, type=Path)
    p.add_argument("--data", nargs="+", type=Path, help="labeled CSVs: cost-quality curve, APGR, CPT, AIQ")
    p.add_argument("--logs", type=Path, help='logged traffic JSONL {"prompt","action" (the chosen model),"propensity","reward"}')
    p.add_argument(
        "--logs-db", help="logged traffic from the gateway DB (requests + feedback; the action is each row's "
        "chosen_model), SQLAlchemy URL"
    )
    p.add_argument("--policy", default=None, help="with --logs-db: only the decisions of this policy")
    p.add_argument("--lam", type=float, default=0.0, help="λ of the evaluated policy (quality per USD)")
    p.add_argument("--epsilon", type=float, default=0.0, help="uniform mixing of the evaluated policy")
    p.add_argument("--num-thresholds", type=int, default=None, help="RouteLLM-style quantile thresholds")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here too")
    return p


def evaluate_labeled(clf: Any, ds: Any, num_thresholds: int | None = None) -> dict[str, Any]:
    """Metrics of a classifier on labeled data (no I/O): two-model report or cost–quality/AIQ."""
    from router import metrics as M

    probs = clf.predict_many(ds.prompts)
    cols = [clf.models.index(m) for m in ds.models]
    probs = probs[:, cols]
    rep: dict[str, Any] = {"n": len(ds), "models": ds.models}
    sw = ds.strong_weak
    if sw is not None:
        i_s, i_w = ds.models.index(sw[0]), ds.models.index(sw[1])
        st, wk = ds.labels[:, i_s], ds.labels[:, i_w]
        score = probs[:, i_s] - probs[:, i_w]
        c = M.routing_curve(score, st, wk, num_thresholds)
        rep.update(M.two_model_report(score, st, wk, num_thresholds))
        rep["curve"] = {
            "strong_share": c.share.tolist()[:: max(1, len(c.share) // 50)],
            "quality": c.quality.tolist()[:: max(1, len(c.share) // 50)],
        }
    if ds.costs is not None:
        cost_pred = (
            np.vstack([clf.cost_model.predict(len(p)) for p in ds.prompts]) if clf.cost_model else ds.costs
        )
        cost_pred = cost_pred[:, cols] if clf.cost_model else cost_pred
        lams = np.r_[0.0, np.geomspace(1.0, 1e5, 60)]
        curve = M.tradeoff_sweep(probs, cost_pred, ds.labels, ds.costs, lams)
        mc, mq = M.single_model_points(ds.labels, ds.costs)
        rng = (float(np.nanmin(mc)), float(np.nanmax(mc)))
        best = int(np.nanargmax(mq))
        rep["aiq"] = M.aiq(curve.cost, curve.quality, rng)
        rep["cost_range"] = rng
        rep["single_models"] = {
            m: {"cost": float(c), "quality": float(q)} for m, c, q in zip(ds.models, mc, mq, strict=True)
        }
        oc = M.oracle_choice(ds.labels, ds.costs)
        rep["oracle"] = dict(
            zip(("cost", "quality"), M.cost_quality_points(ds.labels, ds.costs, oc), strict=True)
        )
        match = M.cost_to_match(curve, float(mq[best]))
        rep["best_model"] = ds.models[best]
        rep["cost_to_match_best_model"] = match
        rep["cost_share_to_match_best_model"] = (
            match / float(mc[best]) if np.isfinite(match) else float("nan")
        )
        rep["curve"] = {
            "cost": curve.cost.tolist(),
            "quality": curve.quality.tolist(),
            "lambda": curve.settings.tolist(),
        }
    return rep


def evaluate_logs(clf: Any, rows: list[dict[str, Any]], lam: float, epsilon: float) -> dict[str, Any]:
    """OPE of the classifier's greedy ``argmax p − λ·cost`` policy (ε-mixed) from logged rows."""
    from router import ope

    models = list(clf.models)
    idx = {m: j for j, m in enumerate(models)}
    rows = [r for r in rows if r.get("action") in idx and r.get("propensity")]
    if not rows:
        return {"n": 0, "error": "no usable logged rows (action must be one of the artifact's models)"}
    k = len(models)
    tp = np.zeros((len(rows), k))
    qhat = np.zeros((len(rows), k))
    for i, r in enumerate(rows):
        p = clf.predict_array(clf.featurizer.featurize(str(r.get("prompt") or "")))
        cost = clf.cost_model.predict(len(str(r.get("prompt") or ""))) if clf.cost_model else np.zeros(k)
        q = p - lam * cost
        tp[i] = epsilon / k
        tp[i, int(np.argmax(q))] += 1.0 - epsilon
        qhat[i] = q
    acts = np.array([idx[r["action"]] for r in rows])
    prop = np.array([float(r["propensity"]) for r in rows])
    rew = np.array([float(r["reward"]) for r in rows])
    out: dict[str, Any] = {"n": len(rows), "logged_mean_reward": float(rew.mean())}
    for e in (
        ope.ips(acts, prop, rew, tp),
        ope.snips(acts, prop, rew, tp),
        ope.doubly_robust(acts, prop, rew, tp, qhat),
    ):
        out[e.method] = {"value": e.value, "lo": e.lo, "hi": e.hi, "se": e.se}
    return out


def eval_main(argv: list[str]) -> int:
    """Evaluate an artifact on labeled data and/or logged traffic; prints a JSON report."""
    from router.artifacts import load_artifact
    from router.offline.datasets import read_csv

    a = _eval_parser().parse_args(argv)
    if not a.data and not a.logs and not a.logs_db:
        print("give --data and/or --logs / --logs-db", file=sys.stderr)
        return 2
    clf, manifest = load_artifact(a.artifact)
    report: dict[str, Any] = {"artifact": str(a.artifact), "version": manifest.get("version")}
    if a.data:
        report["labeled"] = {}
        for path in a.data:
            report["labeled"][path.name] = evaluate_labeled(clf, read_csv(path), a.num_thresholds)
    if a.logs:
        with open(a.logs, encoding="utf-8") as fh:
            rows = [json.loads(ln) for ln in fh if ln.strip()]
        report["off_policy"] = evaluate_logs(clf, rows, a.lam, a.epsilon)
    if a.logs_db:
        from router.offline.feedback_db import read_logged_decisions

        rows = read_logged_decisions(a.logs_db, a.policy)
        report["off_policy_db"] = evaluate_logs(clf, rows, a.lam, a.epsilon)
    txt = json.dumps(report, indent=2, default=float)
    print(txt)
    if a.out:
        a.out.write_text(txt)
    return 0


def train_verifier_main(argv: list[str]) -> int:
    """Train an answer verifier (router/verifier.py) on one model's logged, labeled answers and save it.

    Prints the cross-validated AUC and, with ``--escalate-to``, the escalation curve's APGR / CPT.
    """
    from router.offline.artifacts import save_verifier
    from router.offline.datasets import file_sha256
    from router.offline.verifier_train import read_answers, train_verifier

    p = argparse.ArgumentParser(
        prog="hybridgate router train-verifier",
        description="Train a cascade's answer verifier from labeled answers (*_response / |model_response columns).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", type=Path, help="labeled CSV files with answers")
    src.add_argument(
        "--from-db", dest="from_db", help="gateway DB URL: logged answers + feedback (log.bodies: full)"
    )
    p.add_argument(
        "--model", required=True, help="the model whose answers it judges (data column / served model)"
    )
    p.add_argument("--escalate-to", default=None, help="a stronger model's column, for the escalation curve")
    p.add_argument("--out", required=True, type=Path, help="artifact directory to write")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength")
    a = p.parse_args(argv)
    try:
        if a.data:
            data = read_answers(a.data, a.model, a.escalate_to)
            hashes = {path.name: file_sha256(path) for path in a.data}
        else:
            from router.offline.feedback_db import read_answer_feedback

            data = read_answer_feedback(a.from_db, a.model)
            hashes = {"db": f"{len(data.labels)} logged answers with feedback"}
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    v = train_verifier(data, c=a.C)
    save_verifier(v, a.out, hashes)
    print(json.dumps({"out": str(a.out), "model": a.model, "cv": v.metadata["cv"]}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m router.offline.cli {train,score,eval,train-verifier} ...``"""
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = {
        "train": train_main,
        "score": score_main,
        "eval": eval_main,
        "train-verifier": train_verifier_main,
    }
    if not argv or argv[0] not in cmds:
        print(
            "usage: python -m router.offline.cli {train,score,eval,train-verifier} [options]", file=sys.stderr
        )
        return 2
    return cmds[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
