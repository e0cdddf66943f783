"""Per-request decision overhead of the learned router: featurise + classifier score + bandit choice.

No I/O inside the timed loop: the classifier is trained (or loaded) first, prompts are in memory. Reports
p50/p99/max in microseconds per stage and for the whole decision, for the two-model (MMLU) and the
eleven-model (RouterBench) classifiers, with Thompson sampling (Beta, Monte-Carlo propensities) and
LinUCB over the classifier context.

``decide`` is the whole routing decision as the gateway makes it: ``router.decide`` with the 10-rule,
8-deployment policy of bench/decision_overhead.py and its classifier selector fed by the real
classifier (``ClassifierScorer``, the classifier's models aliased onto the deployments' models);
``total_rules_classifier_thompson`` adds the gateway's Thompson plugin's choice (Monte-Carlo
propensities): rules + classifier + bandit. Each prompt goes through ``decide`` first, then through the
separately timed stages. The classifiers are loaded from artifacts, as the gateway loads them.

Usage: ``python bench/decision_overhead_learned.py [--n 3000] [--artifact DIR] [--json OUT]
[--train-config JSON] [--versus DIR]`` (``--train-config``: ``TrainConfig`` overrides for the trained
cases, e.g. ``'{"group_prior": false}'`` for the classifier without its group prior; ``--versus DIR``:
the cases saved from another classifier, measured in the same process with decisions interleaved, so
two versions see the same machine at the same moments: ``*_versus`` in the output).

To measure on another machine (one without scikit-learn or the data), or several times without training
again: train and save here with ``--save-cases DIR`` (an artifact and the prompts per case), then run
``--cases DIR`` there. Both runs measure the same trained classifiers on the same held-out prompts.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import decision_overhead as rules_bench  # noqa: E402  (bench/decision_overhead.py: policy, deployments)

from policies.loader import parse_policy  # noqa: E402
from router import Plugins, decide  # noqa: E402
from router.artifacts import load_artifact  # noqa: E402
from router.bandits import BanditState, LinUCB, LinUCBState, ThompsonSampling, classifier_context  # noqa: E402
from router.classifier import best_tradeoff  # noqa: E402
from router.offline.artifacts import save_artifact  # noqa: E402
from router.plugins import ClassifierScorer, ThompsonBandit  # noqa: E402

# the bench policy's models that the classifier's models stand for (strongest first)
BENCH_MODELS = [
    "gpt-4o",
    "claude-3-5-sonnet",
    "mistral-large",
    "llama-3-70b",
    "claude-3-5-haiku",
    "gpt-4o-mini",
]


def _aliases(clf) -> dict[str, str]:  # noqa: ANN001
    """The classifier's models, most expensive first (by its cost model), onto the bench's models."""
    models = list(clf.models)
    if clf.cost_model is not None:
        cost = dict(zip(clf.cost_model.models, clf.cost_model.predict(1000).tolist(), strict=True))
        models.sort(key=lambda m: -cost.get(m, 0.0))
    if len(models) == 2:
        return {models[0]: "gpt-4o", models[1]: "gpt-4o-mini"}
    return dict(zip(models, BENCH_MODELS, strict=False))


def _pct(xs: list[float]) -> dict[str, float]:
    a = np.array(xs) * 1e6
    return {
        "p50_us": round(float(np.percentile(a, 50)), 1),
        "p99_us": round(float(np.percentile(a, 99)), 1),
        "max_us": round(float(a.max()), 1),
    }


STAGES = (
    "featurize", "score", "thompson", "linucb", "total_thompson", "total_linucb",
    "decide", "total_rules_classifier_thompson",
)  # fmt: skip


class _Harness:
    """One classifier as the gateway holds it (scorer plugin, Thompson plugin, policy), and its timings."""

    def __init__(self, clf, n: int, seed: int) -> None:  # noqa: ANN001
        self.clf = clf
        self.rng = np.random.default_rng(seed)
        self.arms = list(clf.models)
        self.ts_state = BanditState.new(self.arms)
        for a in self.arms:  # some history so posteriors are not flat
            for _ in range(20):
                self.ts_state.update(a, float(self.rng.random() < 0.7))
        self.ts = ThompsonSampling(kind="beta", lam=50.0, n_mc=64, epsilon=0.02)
        self.lin_state = LinUCBState.new(self.arms, len(self.arms) + 1 + clf.featurizer.n_dense)
        self.lin = LinUCB(lam=50.0, alpha=0.5, epsilon=0.02)
        self.deps = rules_bench.deployments()
        self.policy = parse_policy(
            rules_bench.POLICY.replace(
                "selector: {type: cheapest}", "selector: {type: classifier, threshold: 0.6}"
            )
        )
        self.plugins = Plugins(scorers={"default": ClassifierScorer(clf, _aliases(clf))})
        # the gateway's Thompson plugin over the same posteriors (its own numpy generator derived per call)
        self.thompson = ThompsonBandit(algo=self.ts, state=BanditState.from_dict(self.ts_state.to_dict()))
        self.py_rng = random.Random(seed)
        self.requests = rules_bench.random_inputs(self.py_rng, n, self.deps)
        self.stages: dict[str, list[float]] = {k: [] for k in STAGES}

    def warm_up(self, prompts: list[str]) -> None:
        for w in range(50):
            self.clf.predict(prompts[w % len(prompts)])
            req, sig, now = self.requests[w]
            decide(req, self.policy, self.deps, sig, self.py_rng, now, plugins=self.plugins)

    def step(self, k: int, p: str) -> None:
        """Decision ``k`` on prompt ``p``: the whole gateway decision, then each stage timed alone."""
        clf, arms, stages, pc = self.clf, self.arms, self.stages, time.perf_counter
        req, sig, now = self.requests[k]
        req = dataclasses.replace(req, prompt_text=p)
        t = pc()
        d = decide(req, self.policy, self.deps, sig, self.py_rng, now, plugins=self.plugins)
        t_rules = pc()
        costs_p = clf.cost_model.as_dict(len(p)) if clf.cost_model else None
        self.thompson.choose(arms, {"costs": costs_p}, self.py_rng)
        t_bandit = pc()
        assert d.error is not None or d.trace, "decide() returned no trace"
        stages["decide"].append(t_rules - t)
        stages["total_rules_classifier_thompson"].append(t_bandit - t)
        t0 = pc()
        f = clf.featurizer.featurize(p)
        t1 = pc()
        probs = clf.predict_array(f)
        t2 = pc()
        costs = clf.cost_model.as_dict(f.n_chars) if clf.cost_model else None
        self.ts.choose(self.ts_state, self.rng, costs)
        t3 = pc()
        x = classifier_context(probs, f.dense)
        self.lin.choose(self.lin_state, x, self.rng, costs)
        t4 = pc()
        if costs is not None:
            best_tradeoff(dict(zip(arms, probs.tolist(), strict=True)), costs, 50.0)
        stages["featurize"].append(t1 - t0)
        stages["score"].append(t2 - t1)
        stages["thompson"].append(t3 - t2)
        stages["linucb"].append(t4 - t3)
        stages["total_thompson"].append(t3 - t0)
        stages["total_linucb"].append((t2 - t0) + (t4 - t3))


def measure_many(clfs: dict[str, object], prompts: list[str], n: int, seed: int) -> dict[str, dict]:
    """Per-stage latency over ``n`` decisions on ``prompts`` for each classifier, interleaved: decision
    ``k`` runs on every classifier back to back (the first one alternating), so a busy moment of the
    machine falls on all of them alike. One classifier: the plain measurement."""
    gc.collect()
    gc.freeze()  # as the gateway does once its artifacts are loaded (gateway/app.py, service/artifact_slots.py)
    hs = {name: _Harness(clf, n, seed) for name, clf in clfs.items()}
    for h in hs.values():
        h.warm_up(prompts)
    order = np.random.default_rng(seed).integers(0, len(prompts), n)
    turn = list(hs.values())
    bar = tqdm(total=n, unit="decision", mininterval=1.0, file=sys.stderr, leave=False)
    for k, i in enumerate(order):
        p = prompts[int(i)]
        for h in turn[k % len(turn) :] + turn[: k % len(turn)]:
            h.step(k, p)
        if k % 100 == 99:
            bar.update(100)
    bar.close()
    gc.unfreeze()
    return {name: {k: _pct(v) for k, v in h.stages.items()} for name, h in hs.items()}


def measure(clf, prompts: list[str], n: int, seed: int) -> dict:  # noqa: ANN001
    """Per-stage latency over ``n`` decisions on ``prompts`` by ``clf`` as the gateway loads it."""
    return measure_many({"only": clf}, prompts, n, seed)["only"]


CASES = ("mmlu", "routerbench")


def save_cases(cases: dict[str, tuple], out: Path) -> None:
    """Each case's classifier as an artifact ``out/NAME`` and its held-out prompts as ``out/NAME.prompts.json``."""
    for name, (clf, _, te) in cases.items():
        save_artifact(clf, out / name)
        (out / f"{name}.prompts.json").write_text(json.dumps(te))


def train_cases(seed: int, overrides: dict | None = None) -> dict[str, tuple]:
    """Per data source: (classifier trained on the training half, training-half prompts, held-out prompts)."""
    from router.offline.datasets import (
        holdout_strata,
        read_csv,
        read_many,
        routellm_path,
        routerbench_paths,
        stratified_split,
    )
    from router.offline.train import TrainConfig, train_classifier

    cases = {}
    for name, ds in (
        ("mmlu", read_csv(routellm_path("mmlu"))),
        ("routerbench", read_many(routerbench_paths())),
    ):
        tr, te = stratified_split(holdout_strata(ds), 0.5, seed)
        clf = train_classifier(ds.subset(tr), TrainConfig(seed=seed, **(overrides or {})))
        cases[name] = (clf, [ds.prompts[i] for i in tr], [ds.prompts[i] for i in te])
    return cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--artifact", type=Path, default=None, help="measure this artifact instead of training")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--save-cases", type=Path, default=None, help="save the trained classifiers and prompts in this dir"
    )
    ap.add_argument("--cases", type=Path, default=None, help="measure the classifiers saved by --save-cases")
    ap.add_argument("--train-config", default="{}", help="JSON of TrainConfig overrides for trained cases")
    ap.add_argument(
        "--versus",
        type=Path,
        default=None,
        help="cases of another classifier (--save-cases), measured interleaved with --cases in one process",
    )
    a = ap.parse_args(argv)
    res: dict = {
        "machine": f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}",
        "cpus": len(os.sched_getaffinity(0)),
        "date": time.strftime("%Y-%m-%d"),
        "n": a.n,
    }
    if a.artifact:
        clf, _ = load_artifact(a.artifact)
        prompts = [f"Sample prompt number {i}: what is {i} * 7?" for i in range(200)]
        res["artifact"] = measure(clf, prompts, a.n, a.seed)
    else:
        if not a.cases:
            a.cases = a.save_cases or Path(tempfile.mkdtemp(prefix="decision-cases-"))
            save_cases(train_cases(a.seed, json.loads(a.train_config)), a.cases)
        for name in CASES:
            clf, _ = load_artifact(a.cases / name)  # as the gateway loads it
            prompts = json.loads((a.cases / f"{name}.prompts.json").read_text())
            label = "mmlu_two_model" if name == "mmlu" else "routerbench_eleven_model"
            if a.versus is None:
                res[f"{label}_fresh_load"] = measure(clf, prompts, a.n, a.seed)
                continue
            other, _ = load_artifact(a.versus / name)
            both = measure_many({"cases": clf, "versus": other}, prompts, a.n, a.seed)
            res[f"{label}_fresh_load"] = both["cases"]
            res[f"{label}_versus"] = both["versus"]
    txt = json.dumps(res, indent=2)
    print(txt)
    if a.json:
        a.json.write_text(txt)
    for case, stages in res.items():  # the headline figure, last so it is what a reader sees
        if isinstance(stages, dict) and "total_rules_classifier_thompson" in stages:
            t = stages["total_rules_classifier_thompson"]
            verdict = "within" if t["p99_us"] <= 1000 else "OVER"
            print(
                f"{case}: rules + classifier + Thompson p50 {t['p50_us']:.0f} µs, p99 {t['p99_us']:.0f} µs "
                f"({verdict} the 1,000 µs budget)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
