"""Synthetic arithmetic answers (some wrong) in the RouteLLM CSV layout, for verifier and cascade tests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

WEAK, STRONG = "weak/m", "strong-m"


def arithmetic_problems(n: int, seed: int = 0) -> list[tuple[str, str, bool, bool]]:
    """(prompt, weak answer, weak right, strong right): a wrong weak answer states a wrong sum."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a, b = int(rng.integers(2, 500)), int(rng.integers(2, 500))
        right = bool(rng.random() < 0.6)
        c = a + b if right else a + b + int(rng.integers(1, 40))
        answer = f"Step 1: she starts with {a}.\nStep 2: {a} + {b} = {c}.\nThe answer is {c}."
        out.append((f"Problem {i}: Ann has {a} shells and finds {b} more. How many now?", answer, right,
                    bool(rng.random() < 0.9)))
    return out


def write_routellm(path: Path, rows: list[tuple[str, str, bool, bool]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", WEAK, STRONG, f"{WEAK}_response", f"{STRONG}_response"])
        for p, ans, ok_w, ok_s in rows:
            w.writerow([p, str(ok_w), str(ok_s), ans, "strong answer"])
    return path
