"""A small synthetic routing dataset for router training and artifact tests."""

from __future__ import annotations

import numpy as np

from router.offline.datasets import LabeledDataset


def toy_routing_dataset(n: int, seed: int = 0) -> LabeledDataset:
    """``n`` prompts for two models: arithmetic prompts need the strong model, trivia prompts do not."""
    rng = np.random.default_rng(seed)
    prompts, labels = [], []
    for i in range(n):
        if i % 2:
            a, b = rng.integers(10, 999, 2)
            prompts.append(f"Compute {a} * {b} + {i} and explain each step of the calculation.")
            labels.append([float(rng.random() < 0.9), float(rng.random() < 0.3)])
        else:
            prompts.append(f"What is the capital city of country number {i}? Answer briefly.")
            labels.append([float(rng.random() < 0.9), float(rng.random() < 0.85)])
    return LabeledDataset("toy", prompts, ["strong-m", "weak-m"], np.array(labels))
