"""Cascades judged by a trained answer verifier, on the shared routing data (offline, out-of-fold).

* GSM8K (RouteLLM, Mixtral → GPT-4): serve Mixtral, escalate its least trusted answers to GPT-4. The
  escalation curve (share of prompts escalated → accuracy) is scored with APGR / CPT like a router,
  beside the prompt-only baselines on the same prompts. A cascade also pays the cheap call on every
  prompt, which the strong-call axis does not show.
* RouterBench: for each cheap model, the same cascade to GPT-4 with real per-prompt USD: the cost at
  which it first matches GPT-4's accuracy, and its best accuracy.

Every verifier score is out-of-fold (5 folds × 3 shuffles): no answer is judged by a verifier that saw it.

Usage: ``python bench/verifier_eval.py [--json OUT]``
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router.metrics import length_scores, random_scores, two_model_report  # noqa: E402
from router.offline.datasets import (  # noqa: E402
    _parse_cost,
    _parse_label,
    _raise_csv_limit,
    routellm_path,
    routerbench_paths,
)
from router.offline.verifier_train import AnswerSet, oof_scores, read_answers, train_verifier  # noqa: E402

GPT4 = "gpt-4-1106-preview"
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def judge_latency(data: AnswerSet) -> dict[str, float]:
    """µs per ``p_ok`` call of a verifier trained on all of ``data``, over its answers (what a cascade adds
    after the cheap answer, before deciding)."""
    v = train_verifier(data)
    times = []
    for p, a in zip(data.prompts, data.answers, strict=True):
        t0 = time.perf_counter()
        v.p_ok(p, a)
        times.append(time.perf_counter() - t0)
    us = np.array(times) * 1e6
    return {"p50_us": round(float(np.percentile(us, 50)), 1), "p99_us": round(float(np.percentile(us, 99)), 1)}


def gsm8k() -> dict[str, dict[str, float]]:
    data = read_answers([routellm_path("gsm8k")], MIXTRAL, other=GPT4)
    strong, weak = data.other, data.labels
    rep = {
        "verifier cascade (escalate the least trusted answers)": two_model_report(
            -oof_scores(data), strong, weak
        ),
        "length heuristic (prompt only)": two_model_report(length_scores(data.prompts), strong, weak),
        "random (mean of 20)": {
            k: float(
                np.mean(
                    [
                        two_model_report(random_scores(len(weak), np.random.default_rng(s)), strong, weak)[k]
                        for s in range(20)
                    ]
                )
            )
            for k in ("apgr", "cpt50", "cpt80")
        },
        "oracle (escalate exactly the wrong answers)": two_model_report(1.0 - weak, strong, weak),
    }
    out = {k: {m: round(float(v), 4) for m, v in r.items()} for k, r in rep.items()}
    out["verifier p_ok latency"] = judge_latency(data)
    return out


def _routerbench_pairs(cheap: str) -> tuple[AnswerSet, np.ndarray, np.ndarray]:
    """Rows where both the cheap model's and GPT-4's correctness are known: answers, cheap and GPT-4 cost."""
    _raise_csv_limit()
    prompts, answers, y, y4, c, c4 = [], [], [], [], [], []
    for path in routerbench_paths():
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                a, b = _parse_label(row[cheap]), _parse_label(row[GPT4])
                if np.isnan(a) or np.isnan(b):
                    continue
                prompts.append(row["prompt"])
                answers.append(row[f"{cheap}|model_response"])
                y.append(a)
                y4.append(b)
                c.append(_parse_cost(row[f"{cheap}|total_cost"]))
                c4.append(_parse_cost(row[f"{GPT4}|total_cost"]))
    return AnswerSet(cheap, prompts, answers, np.array(y), np.array(y4)), np.array(c), np.array(c4)


def routerbench(cheap_models: list[str]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for cheap in cheap_models:
        data, cost, cost4 = _routerbench_pairs(cheap)
        p = oof_scores(data)
        order = np.argsort(p, kind="stable")  # least trusted first
        acc4, mean_c4 = float(data.other.mean()), float(cost4.mean())
        best_acc, match, at_30 = 0.0, None, float(data.labels.mean())
        for k in range(len(p) + 1):  # escalate the k least trusted answers
            esc = np.zeros(len(p), dtype=bool)
            esc[order[:k]] = True
            acc = float(np.where(esc, data.other, data.labels).mean())
            spend = float((cost + esc * cost4).mean())
            best_acc = max(best_acc, acc)
            if spend <= 0.3 * mean_c4:
                at_30 = max(at_30, acc)
            if match is None and acc >= acc4:
                match = spend / mean_c4
        from sklearn.metrics import roc_auc_score

        out[cheap] = {
            "n": len(p),
            "auc": round(float(roc_auc_score(data.labels, p)), 4),
            "cheap_acc": round(float(data.labels.mean()), 4),
            "gpt4_acc": round(acc4, 4),
            "best_cascade_acc": round(best_acc, 4),
            "cascade_acc_within_30pct_of_gpt4_cost": round(at_30, 4),
            "cost_share_of_gpt4_to_match_it": None if match is None else round(match, 4),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    t0 = time.time()
    res = {
        "date": time.strftime("%Y-%m-%d"),
        "gsm8k_mixtral_to_gpt4": gsm8k(),
        "routerbench_cheap_to_gpt4": routerbench(
            [
                "zero-one-ai/Yi-34B-Chat",
                "mistralai/mixtral-8x7b-chat",
                "gpt-3.5-turbo-1106",
                "claude-instant-v1",
            ]
        ),
    }
    res["seconds"] = round(time.time() - t0, 1)
    txt = json.dumps(res, indent=2)
    print(txt)
    if a.json:
        a.json.write_text(txt)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
