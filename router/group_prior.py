"""Group prior: which subject or task a prompt belongs to, and how well each model does on that group.

Why: on the RouteLLM MMLU data the subject explains most of *when* the strong model is worth calling
(knowing each prompt's true subject and the training half's per-subject gap gives APGR 0.75 on the
held-out half, more than any per-prompt text model we trained). The subject is not given at routing
time, so it is inferred: a multinomial logistic regression over the word and character TF-IDF blocks
gives ``P(group | prompt)``, and the prior of model ``m`` is ``Σ_g P(g | prompt) · acc[g, m]`` — the
expected accuracy under the group uncertainty, so confusing two subjects with similar gaps costs
nothing. The stackers in :mod:`router.classifier` take these priors as inputs beside the per-prompt
heads. Pure: numpy only at decision time (sklearn is used offline, in ``router.offline.train``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from router.char_ngrams import CharNgrams, CharWords
from router.features import PromptFeatures
from router.native import fastfeat

__all__ = ["GroupPrior", "group_accuracy"]


def group_accuracy(
    labels: np.ndarray, groups: Sequence[str], names: Sequence[str], prior_n: float
) -> np.ndarray:
    """(G, M) accuracy of every model on every group, shrunk toward the model's overall accuracy.

    ``prior_n`` pseudo-observations at the global mean keep small groups from swinging the prior;
    unknown labels (NaN) count for neither numerator nor denominator.
    """
    g = np.asarray(groups)
    glob = np.nanmean(labels, axis=0)
    glob = np.where(np.isnan(glob), 0.5, glob)
    out = np.empty((len(names), labels.shape[1]))
    for k, name in enumerate(names):
        lab = labels[g == name]
        known = ~np.isnan(lab)
        out[k] = (np.nansum(lab, axis=0) + prior_n * glob) / (known.sum(axis=0) + prior_n)
    return out


@dataclass
class GroupPrior:
    """Frozen group classifier + per-group model accuracy table."""

    groups: list[str]
    word_coef: np.ndarray  # (V, G) over the featuriser's word TF-IDF block
    char_coef: np.ndarray  # (C, G) over its character n-gram block (C may be 0)
    intercept: np.ndarray  # (G,)
    accuracy: np.ndarray  # (G, M) shrunk accuracy of each model on each group
    char: CharNgrams | None = None  # the featuriser's character block: its word memo rows index _table
    _table: np.ndarray = field(
        default_factory=lambda: np.zeros((0, 0), np.float32), repr=False, compare=False
    )
    _filled: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False, compare=False)
    _generation: int = field(default=-1, repr=False, compare=False)

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.update(_table=np.zeros((0, 0), np.float32), _filled=np.zeros(0, bool), _generation=-1)
        return state

    def _char_logits(self, cw: CharWords) -> np.ndarray:
        """``x_char @ char_coef`` as ``Σ_w weight_w · (u_w @ char_coef)``, the per-word products kept in a
        table indexed by the character memo's rows (router/char_ngrams.py)."""
        ch = self.char
        assert ch is not None
        if cw.generation != ch.generation:  # the memo started over since featurisation: no table rows
            return cw.weight @ self._word_logits([ch.word_vector(w) for w in cw.words])
        self._ensure_table(ch)
        rows = cw.rows
        miss = rows[~self._filled[rows]]
        if len(miss):
            vecs = [cw.fresh.get(r) or ch.word_vector(ch.word(r)) for r in miss.tolist()]
            self._table[miss] = self._word_logits(vecs)
            self._filled[miss] = True
        return cw.weight @ self._table[rows]

    def _ensure_table(self, ch: CharNgrams) -> None:
        """A table for the memo's current generation (a new one when the memo started over)."""
        if self._generation != ch.generation or len(self._filled) < ch.cache_size:
            self._table = np.zeros((ch.cache_size, len(self.groups)), dtype=np.float32)
            self._filled = np.zeros(ch.cache_size, dtype=bool)
            self._generation = ch.generation

    def prefill(self, chunk: int = 1000) -> int:
        """Memoise the character block's training words and their group logits (see
        :meth:`CharNgrams.prefill`), in batches of ``chunk`` words; returns how many table rows it filled."""
        ch = self.char
        if ch is None or not len(self.char_coef):
            return 0
        fresh = ch.prefill()
        self._ensure_table(ch)
        rows = sorted(r for r, (idx, _) in fresh.items() if len(idx))  # no n-gram: never read (weight 0)
        for i in range(0, len(rows), chunk):
            part = rows[i : i + chunk]
            self._table[part] = self._word_logits([fresh[r] for r in part])
            self._filled[part] = True
        return len(rows)

    def _word_logits(
        self, vecs: list[tuple[np.ndarray, np.ndarray]], use_native: bool = True
    ) -> np.ndarray:
        """``u_w @ char_coef`` (n, G) for each word's (indices, values), in the coefficients' float type:
        each word's scaled coefficient rows added one after another, in n-gram order.

        The order is fixed so that the C version (``fastfeat.word_logits``, used when the extension is
        built and the coefficients are float32; ~1 µs a word against ~3–11) gives the same bits.
        ``np.add.accumulate`` adds strictly in order; ``np.add.reduceat``, used before, sums in an
        order of numpy's choosing (pairwise), which no other implementation can promise to follow.
        """
        g = self.char_coef.shape[1]
        if not vecs:
            return np.zeros((0, g), dtype=self.char_coef.dtype)
        if use_native and fastfeat is not None and self.char_coef.dtype == np.float32:
            return np.frombuffer(fastfeat.word_logits(vecs, self.char_coef), dtype=np.float32).reshape(-1, g)
        idx = np.concatenate([v[0] for v in vecs])
        val = np.concatenate([v[1] for v in vecs]).astype(self.char_coef.dtype)
        rows = val[:, None] * self.char_coef[idx]
        ends = np.cumsum([len(v[0]) for v in vecs]).tolist()
        return np.vstack(
            [np.add.accumulate(rows[e - len(v[0]) : e], axis=0)[-1] for v, e in zip(vecs, ends, strict=True)]
        )

    def group_probs(self, f: PromptFeatures) -> np.ndarray:
        """Softmax over groups (G,).

        The word-block gather stays in float32, the coefficients' storage type, so numpy does not upcast
        the gathered rows.
        """
        z = self.intercept.astype(np.float64)
        if len(f.text_idx):
            z = z + f.text_val.astype(self.word_coef.dtype) @ self.word_coef[f.text_idx]
        if f.char is not None and f.char.words and len(self.char_coef) and self.char is not None:
            z = z + self._char_logits(f.char)
        z = np.exp(z - z.max())
        return z / z.sum()

    def model_prior(self, f: PromptFeatures) -> np.ndarray:
        """Expected accuracy of every model (M,) given the prompt's inferred group."""
        return self.group_probs(f) @ self.accuracy

    def model_prior_many(self, word: object, char: object) -> np.ndarray:
        """Batch form over CSR blocks (offline): (n, M)."""
        z = np.asarray(word @ self.word_coef) + self.intercept
        if self.char_coef.shape[0]:
            z = z + np.asarray(char @ self.char_coef)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return (z / z.sum(axis=1, keepdims=True)) @ self.accuracy
