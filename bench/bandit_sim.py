"""Bandit simulation on the RouterBench data (11 models, real 0/1 labels and USD costs).

Checks, for a given λ (quality points per USD):
1. the regret of Thompson sampling (Beta), UCB1 and LinUCB against the best fixed model grows
   sublinearly (we fit ``R(t) ∝ t^a`` on the second half of the run and report ``a``), and the share of
   pulls of the best fixed model in the last 10% of the run;
2. off-policy evaluation: from Thompson's logs, IPS / SNIPS / DR estimate two other policies (always the
   second-best model; the per-task best model) and we check the true value lies in each 95% interval.

Usage: ``python bench/bandit_sim.py [--lam 50] [--horizon 20000] [--seed 0] [--json OUT]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router.bandits import UCB1, LinUCB, ThompsonSampling  # noqa: E402
from router.offline.datasets import read_many, routerbench_paths  # noqa: E402
from router.offline.simulate import BanditEnv, policy_value, simulate  # noqa: E402
from router.ope import doubly_robust, ips, snips, tabular_reward_model  # noqa: E402


def regret_exponent(cum: np.ndarray) -> float:
    """Slope of log R(t) vs log t over the second half of the run (1 = linear regret)."""
    t = np.arange(1, len(cum) + 1)
    h = len(cum) // 2
    ok = cum[h:] > 0
    if ok.sum() < 2:
        return 0.0
    return float(np.polyfit(np.log(t[h:][ok]), np.log(cum[h:][ok]), 1)[0])


def task_contexts(tasks: list[str], prompts: list[str]) -> np.ndarray:
    """[1, task one-hot, standardised log length]: a small context LinUCB can use."""
    names = sorted(set(tasks))
    ln = np.log1p([len(p) for p in prompts])
    ln = (ln - ln.mean()) / (ln.std() + 1e-9)
    return np.array([[1.0] + [float(t == n) for n in names] + [x] for t, x in zip(tasks, ln, strict=True)])


def run(lam: float, horizon: int, seed: int, data_paths: list[Path] | None = None) -> dict:
    ds = read_many(data_paths or routerbench_paths())
    ctx = task_contexts(ds.tasks or [""] * len(ds), ds.prompts)
    keep = ~np.isnan(ds.labels).any(axis=1)
    tasks = np.array(ds.tasks)[keep]
    env = BanditEnv.from_arrays(ds.models, ds.labels, ds.costs, lam, ctx)  # type: ignore[arg-type]
    k = len(env.arms)
    best = env.best_arm
    out: dict = {
        "lam": lam,
        "horizon": horizon,
        "seed": seed,
        "n_prompts": int(len(env.labels)),
        "best_fixed_arm": env.arms[best],
        "best_fixed_value": float(env.arm_means[best]),
        "policies": {},
    }
    logs = {}
    for name, pol in (
        # decaying exploration floor (ε/√(1+t/200)): sublinear regret, propensities stay > 0
        ("thompson_beta", ThompsonSampling(kind="beta", lam=lam, epsilon=0.05, epsilon_decay=200)),
        ("thompson_gauss", ThompsonSampling(kind="gaussian", lam=lam, epsilon=0.05, epsilon_decay=200)),
        ("ucb1", UCB1(lam=lam, epsilon=0.05, epsilon_decay=200)),
        ("ucb1_scale0.25", UCB1(lam=lam, scale=0.25, epsilon=0.05, epsilon_decay=200)),
        ("linucb_task", LinUCB(lam=lam, alpha=0.5, epsilon=0.05, epsilon_decay=200)),
        # constant 5% exploration: the logging policy used for the off-policy check below
        ("thompson_beta_eps0.05_logger", ThompsonSampling(kind="beta", lam=lam, epsilon=0.05)),
    ):
        t0 = time.perf_counter()
        log = simulate(env, pol, horizon, np.random.default_rng(seed))
        logs[name] = log
        last = slice(int(horizon * 0.9), horizon)
        out["policies"][name] = {
            "regret_final": float(log.pseudo_regret[-1]),
            "regret_at_quarter": float(log.pseudo_regret[horizon // 4 - 1]),
            "regret_exponent": regret_exponent(log.pseudo_regret),
            "best_arm_share_last10pct": float(np.mean(log.actions[last] == best)),
            "mean_reward_last10pct": float(np.mean(log.rewards[last])),
            "seconds": round(time.perf_counter() - t0, 2),
        }

    # OPE from Thompson's logs
    log = logs["thompson_beta_eps0.05_logger"]
    second = int(np.argsort(env.arm_means)[-2])
    task_names = sorted(set(tasks))
    per_task_best = {t: int(np.argmax(env.rewards[tasks == t].mean(axis=0))) for t in task_names}

    def onehot(j: int) -> np.ndarray:
        v = np.zeros(k)
        v[j] = 1.0
        return v

    targets = {
        f"always_{env.arms[second]}": lambda i: onehot(second),
        "per_task_best": lambda i: onehot(per_task_best[tasks[i]]),
    }
    ope_out = {}
    for name, fn in targets.items():
        truth = policy_value(env, fn)
        tp = np.vstack([fn(int(i)) for i in log.rows])
        qhat = tabular_reward_model(log.actions, log.rewards, k)
        ests = [
            ips(log.actions, log.propensities, log.rewards, tp),
            snips(log.actions, log.propensities, log.rewards, tp),
            doubly_robust(log.actions, log.propensities, log.rewards, tp, qhat),
        ]
        ope_out[name] = {
            "true_value": truth,
            **{
                e.method: {"value": e.value, "lo": e.lo, "hi": e.hi, "covers_truth": e.contains(truth)}
                for e in ests
            },
        }
    out["ope_from_thompson_logs"] = ope_out
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lam", type=float, default=50.0)
    ap.add_argument("--horizon", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    res = run(a.lam, a.horizon, a.seed)
    txt = json.dumps(res, indent=2)
    print(txt)
    if a.json:
        a.json.write_text(txt)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
