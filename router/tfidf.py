"""TF-IDF helpers shared by the word block (router/features.py) and the character block
(router/char_ngrams.py): one IDF formula and one way to stack per-prompt sparse rows."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["smooth_idf", "rows_to_csr"]


def smooth_idf(df: Sequence[int], n: int) -> np.ndarray:
    """sklearn's smooth IDF ``ln((1+n)/(1+df)) + 1`` of each document frequency, over ``n`` documents."""
    return np.array([math.log((1 + n) / (1 + c)) + 1.0 for c in df], dtype=np.float64)


def rows_to_csr(idx: Sequence[np.ndarray], val: Sequence[np.ndarray], width: int) -> object:
    """CSR matrix (len(idx) × width) whose row i has values ``val[i]`` at columns ``idx[i]`` (offline)."""
    from scipy import sparse  # local: only offline paths need scipy

    indptr = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum([len(i) for i in idx], out=indptr[1:])
    ind = np.concatenate(idx) if len(idx) else np.zeros(0, np.int64)
    data = np.concatenate(val) if len(val) else np.zeros(0)
    return sparse.csr_matrix((data, ind, indptr), shape=(len(idx), width))
