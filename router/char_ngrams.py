"""Character n-gram block of the prompt features: sub-word evidence for the group prior.

Only the group prior (router/group_prior.py) reads it: MMLU subject inference gains ~4 points of
accuracy from n-grams such as ``-itis``, ``-ase``, ``stoichio`` that the word vocabulary misses.

The block is built word by word. A prompt's vector is the sum of its words' n-gram vectors, each word
weighted by its sublinear count::

    x = Σ_w s_w · u_w / N      s_w = 1 + ln(count of w in the prompt)
                               u_w[j] = (1 + ln m_wj) · idf_j   (m_wj: occurrences of n-gram j in w)
                               N = sqrt(Σ_w s_w² · |u_w|²)

``N`` is the L2 norm the sum would have if no two words shared an n-gram. Why this form rather than
TF-IDF over the merged prompt: every term is per word, so a linear model over ``x`` is a weighted sum
of per-word vectors ``u_w @ coef`` that the reader computes once per word and keeps in a table. A
decision then never merges a prompt's ~700 n-gram indices (~0.2 ms of the 1 ms budget on the 2-core
box). MMLU subject accuracy: 72.6% against 73.1% with merged, exactly normalised TF-IDF (±0.75 points of
noise on 3,500 prompts).

Per-process memo: each word seen gets a row number; ``|u_w|²`` lives in one contiguous array indexed by
row, and readers (the group prior) keep their per-word values in tables indexed the same way. Rows,
not per-word objects, because a decision touches ~100 words and scattered small arrays cost a cache
miss each when the gateway interleaves other work. The memo is bounded; when full it starts over and
bumps ``generation``, so readers know their tables are stale.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress

import numpy as np

from router.native import fastfeat
from router.tfidf import rows_to_csr, smooth_idf

__all__ = ["CharNgrams", "CharWords", "fit_char_ngrams"]

_WORD = re.compile(r"\w+")
MAX_KNOWN_WORDS = 50_000  # training words kept in an artifact for prefilling (~0.5 MB pickled)


def _word_ngrams(word: str, n_min: int, n_max: int) -> list[str]:
    """Character n-grams of one word padded with spaces, as sklearn's ``char_wb`` analyser makes them."""
    w = " " + word + " "
    return [w[i : i + n] for n in range(n_min, n_max + 1) for i in range(len(w) - n + 1)]


@dataclass(frozen=True)
class CharWords:
    """One prompt's character block: its words (with n-grams), their memo rows and weights ``s_w / N``."""

    words: tuple[str, ...]
    rows: np.ndarray  # valid while the memo's generation equals ``generation``
    weight: np.ndarray
    generation: int
    fresh: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # rows new with this
    # prompt → their n-gram vectors, so a reader filling its table does not recompute them


@dataclass
class CharNgrams:
    """Frozen n-gram vocabulary + IDF, and the per-process word memo (not pickled)."""

    vocab: dict[str, int]
    idf: np.ndarray
    n_min: int = 2
    n_max: int = 5
    max_chars: int = 800  # head of the prompt only: the subject shows early; bounds p99 latency
    cache_size: int = 100_000
    # the training prompts' words, most frequent first: memoised by :meth:`prefill` when an artifact is
    # loaded, so a fresh process does not pay for them on the request path
    known_words: tuple[str, ...] = field(default=(), repr=False)
    generation: int = field(default=0, compare=False)
    _rows: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    _words: list[str] = field(default_factory=list, repr=False, compare=False)
    _sq: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    _table: object | None = field(default=None, repr=False, compare=False)  # router._fastfeat.NgramTable

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        # the memo and the C table are derived, not the model
        state.update(generation=0, _rows={}, _words=[], _sq=np.zeros(0), _table=None)
        return state

    def _ngram_table(self) -> object | None:
        """The vocabulary as a C hash table (router._fastfeat.NgramTable), built on first use."""
        if self._table is None and fastfeat is not None:
            names = [""] * len(self.vocab)
            for gram, col in self.vocab.items():
                names[col] = gram
            self._table = fastfeat.NgramTable(names, self.n_min, self.n_max)
        return self._table

    def word_vector(self, word: str, use_native: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(n-gram indices, ``(1 + ln m) · idf`` values) of one lower-cased word.

        ``use_native``: the n-grams are cut and looked up in C when the extension is built (~4 µs a word
        against ~20); the same indices, in the same order, as below."""
        table = self._ngram_table() if use_native else None
        if table is not None:
            ids, tf = table.vector(word)  # type: ignore[attr-defined]
            idx = np.frombuffer(ids, dtype=np.int64)
            if tf is None:
                return idx, self.idf[idx]
            return idx, (1.0 + np.log(np.frombuffer(tf, dtype=np.int64))) * self.idf[idx]
        get = self.vocab.get
        ids = [j for j in map(get, _word_ngrams(word, self.n_min, self.n_max)) if j is not None]
        if len(set(ids)) == len(ids):  # the usual case: no n-gram repeats inside the word, m = 1
            idx = np.array(ids, dtype=np.int64)
            return idx, self.idf[idx]
        idx, tf = np.unique(np.array(ids, dtype=np.int64), return_counts=True)
        return idx, (1.0 + np.log(tf)) * self.idf[idx]

    def prefill(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Memoise ``known_words`` (up to half the memo, leaving room for new words); returns the new
        rows' n-gram vectors so readers can fill their tables in one batch (:meth:`GroupPrior.prefill`).

        Why: in a fresh process every word is new, and building a word's vector and its group logits on
        the request path put a restarted gateway's p99 at 1.5–3 ms until the memo filled, against
        ~0.9 ms once warm (bench/decision_overhead_learned.py).
        """
        fresh: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for w in self.known_words[: self.cache_size // 2]:
            if w not in self._rows:
                self._row(w, fresh)
        return fresh

    def word(self, row: int) -> str:
        """The word memoised at ``row`` in the current generation."""
        return self._words[row]

    def _row(self, word: str, fresh: dict[int, tuple[np.ndarray, np.ndarray]]) -> int:
        row = self._rows.get(word)
        if row is None:
            if len(self._words) >= self.cache_size:
                self._rows, self._words = {}, []
                self.generation += 1
                fresh.clear()
            if len(self._sq) < self.cache_size:
                self._sq = np.zeros(self.cache_size)
            row = len(self._words)
            fresh[row] = vec = self.word_vector(word)
            self._sq[row] = float(vec[1] @ vec[1])
            self._words.append(word)
            self._rows[word] = row
        return row

    def words(self, text: str, use_native: bool = True) -> CharWords:
        """The character block of a normalised, clipped prompt (``use_native``: count its words in C
        when the extension is built; same result as the ``Counter`` below)."""
        low = text[: self.max_chars].lower()
        if use_native and fastfeat is not None:
            distinct, raw = fastfeat.word_counts(low)
            counts = np.frombuffer(raw, dtype=np.float64)
        else:
            counter = Counter(_WORD.findall(low))
            distinct, counts = list(counter), np.fromiter(counter.values(), np.float64, len(counter))
        fresh: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for _ in range(2):  # a second pass only if the memo started over while this prompt filled it
            gen = self.generation
            got = list(map(self._rows.get, distinct))  # known words: one C-level pass
            if None in got:
                got = [self._row(w, fresh) if r is None else r for w, r in zip(distinct, got, strict=True)]
            rows = np.array(got, dtype=np.int64)
            if gen == self.generation:
                sq = self._sq[rows]
                break
        else:  # more distinct words than the memo holds: no valid rows, norms computed directly
            gen = -1
            sq = np.array([float(v @ v) for _, v in map(self.word_vector, distinct)])
        keep = sq > 0.0
        s = 1.0 + np.log(counts[keep])
        if not len(s):
            return CharWords((), rows[:0], s, gen)
        words = tuple(compress(distinct, keep.tolist()))
        return CharWords(words, rows[keep], s / math.sqrt(float(s * s @ sq[keep])), gen, fresh)

    def sparse(self, cw: CharWords | None) -> tuple[np.ndarray, np.ndarray]:
        """(indices, values) of ``Σ_w weight_w · u_w``: the explicit vector, for training matrices."""
        if cw is None or not cw.words:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        parts = [self.word_vector(w) for w in cw.words]
        idx = np.concatenate([p[0] for p in parts])
        val = np.concatenate([p[1] * wt for p, wt in zip(parts, cw.weight.tolist(), strict=True)])
        uniq, inv = np.unique(idx, return_inverse=True)
        return uniq, np.bincount(inv, weights=val)

    def vector(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(indices, values) of one normalised, clipped prompt's character vector ``x``."""
        return self.sparse(self.words(text))


def fit_char_ngrams(
    texts: Sequence[str],
    max_features: int,
    min_df: int = 2,
    labels: Sequence[str] | None = None,
) -> CharNgrams:
    """Vocabulary of ``max_features`` in-word 2–5-grams (document frequency ≥ ``min_df``).

    Without ``labels`` the most document-frequent n-grams are kept. With ``labels`` (the group of each
    text) the n-grams with the highest χ² statistic against the groups are kept instead. Why: frequent
    n-grams ("the", " of") occur in every prompt and carry no subject evidence. On MMLU, 15k
    χ²-selected n-grams infer the subject as well as 30k frequent ones (73% either way).
    """
    df: Counter[str] = Counter()
    word_df: Counter[str] = Counter()
    head = CharNgrams.max_chars
    for t in texts:
        grams: set[str] = set()
        words = set(_WORD.findall(t[:head].lower()))
        word_df.update(words)
        for w in words:
            grams.update(_word_ngrams(w, 2, 5))
        df.update(grams)
    kept = sorted(((c, g) for g, c in df.items() if c >= min_df), key=lambda x: (-x[0], x[1]))
    if labels is not None and len(kept) > max_features:
        kept = _chi2_top(texts, kept, labels, max_features)
    kept = kept[:max_features]
    kept.sort(key=lambda x: x[1])
    block = _block(kept, len(texts))
    block.known_words = tuple(w for w, _ in word_df.most_common(MAX_KNOWN_WORDS))
    return block


def _block(kept: Sequence[tuple[int, str]], n: int, **memo: int) -> CharNgrams:
    """The block of ``kept`` ((document frequency, n-gram) pairs, column order) over ``n`` documents."""
    return CharNgrams(
        vocab={g: i for i, (_, g) in enumerate(kept)}, idf=smooth_idf([c for c, _ in kept], n), **memo
    )


def _chi2_top(
    texts: Sequence[str], kept: list[tuple[int, str]], labels: Sequence[str], k: int
) -> list[tuple[int, str]]:
    """The ``k`` candidates of ``kept`` ((df, n-gram) pairs) with the highest χ² against ``labels``,
    scored on the vectors the candidate vocabulary gives (sklearn's ``chi2``; offline only)."""
    from sklearn.feature_selection import chi2

    cand = _block(kept, len(texts), cache_size=max(100_000, 50 * len(texts)))
    rows = [cand.vector(t) for t in texts]
    x = rows_to_csr([r[0] for r in rows], [r[1] for r in rows], len(kept))
    score = np.nan_to_num(chi2(x, np.asarray(labels))[0])
    top = np.argsort(-score, kind="stable")[:k]
    return [kept[i] for i in np.sort(top)]
