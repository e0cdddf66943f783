"""Prompt featurisation for the learned router: pure, deterministic and cheap at decision time.

A prompt becomes two blocks:

* **text**: TF-IDF over lower-cased word uni- and bigrams. The vocabulary and IDF weights are fitted at
  training time and frozen into the artifact (a plain ``dict`` and a numpy array), so scoring one prompt
  is a tokeniser, a few hundred look-ups and a normalisation — no sklearn call per request. Where the C
  extension is built (router/native.py) the tokeniser, look-ups and structure features run in C, with
  results bit-equal to the Python below (tests/router_learning/test_fastfeat.py). We use a
  vocabulary rather than feature hashing because Python's ``hash`` is salted per process and a dict is
  as fast as a stable hash in pure Python; no collisions either.
* **char** (optional): character 2–5-grams inside words, built word by word (router/char_ngrams.py).
  Only the group prior (router/group_prior.py) reads it: subject inference gains ~4 points of accuracy
  on MMLU from sub-word evidence (``-itis``, ``-ase``, ``stoichio``) that the word vocabulary misses.
* **dense**: handcrafted structure features (length, digits, multiple-choice options, negations,
  code markers, blanks, …), standardised with means/scales frozen at training time. On the RouteLLM data
  these carry as much signal about *which model is needed* as the words do.

Only the prompt text is used (never model answers). Metadata such as the MMLU subject is not given at
routing time by the scoring contract, so any such signal must come from the text itself.
"""

from __future__ import annotations

import ast
import contextlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from router.char_ngrams import CharNgrams, CharWords, fit_char_ngrams
from router.native import fastfeat
from router.tfidf import rows_to_csr, smooth_idf

__all__ = [
    "normalize_prompt",
    "DENSE_FEATURE_NAMES",
    "dense_features",
    "PromptFeatures",
    "CharNgrams",
    "fit_char_ngrams",
    "TextFeaturizer",
    "fit_featurizer",
]

# Long prompts are cut to their head and tail before featurisation: it bounds the decision-time cost
# (p99 latency) while keeping the question and, for multiple choice, the options at the end. 1,600
# characters instead of 2,500 leave held-out APGR within noise and cut the longest prompts'
# featurisation by about a third (bench/RESULTS.md).
HEAD_CHARS = 1000
TAIL_CHARS = 600

_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
_NUM = re.compile(r"\d+(?:[.,]\d+)*")
_OPTION = re.compile(r"^\s*\(?([A-Ha-h])[.)]\s", re.M)
_NEG = re.compile(r"\b(?:not|except|least|false|incorrect|never)\b")
# substring counts (C speed) instead of alternation regexes, which cost ~0.1-0.3 ms on long prompts
_CODE_MARKERS = ("```", "def ", "return", "class ", "{", "}", ";", "import", "function", "=>")
_ROMAN_MARKERS = ("I only", "II only", "III only", "IV only", "I and II", "II and III", "I and III", "I, II")
_MATH_CHARS = b"=+*/^<>"
_SENT = re.compile(r"[.!?](\s|$)")


def normalize_prompt(text: str) -> str:
    """Canonical prompt text: RouterBench stores prompts as a stringified Python list of turns.

    Both the stringified form and the plain text featurise identically, so a caller may send either.
    """
    t = text.strip()
    if len(t) >= 4 and t[0] == "[" and t[-1] == "]" and t[1] in "'\"":
        try:
            v = ast.literal_eval(t)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return t
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return "\n".join(v).strip()
    return t


def _clip(text: str) -> str:
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    return text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]


DENSE_FEATURE_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "log_lines",
    "log_numbers",
    "log_distinct_numbers",
    "digit_frac",
    "log_max_number",
    "has_decimal",
    "n_options",
    "log_mean_option_len",
    "option_len_cv",
    "numeric_option_frac",
    "log_stem_chars",
    "statement_pair",
    "negation",
    "which_of_following",
    "percent",
    "money",
    "passage",
    "question_marks",
    "math_ops",
    "roman_combo",
    "upper_frac",
    "code_markers",
    "blank",
    "write_function",
    "log_sentences",
    "mean_word_len",
    "few_shot_answers",
)


_DIGITS = b"0123456789"
# bytes that can be part of a number; every other byte becomes a space before the number regex runs
_NUM_RUNS = bytes(c if c in b"0123456789.," else 32 for c in range(256))
_NUM_BYTES = re.compile(rb"\d+(?:[.,]\d+)*")
_NEG_WORDS = ("not", "except", "least", "false", "incorrect", "never")


def _numbers(text: str) -> list[str]:
    """``_NUM.findall(text)``, faster on ASCII text.

    A match is made of digits, '.' and ','; so it lies inside one run of those bytes, and matching the
    runs alone (joined by spaces) finds the same numbers. The regex then scans a few dozen bytes
    instead of the whole prompt (~5x faster on a 2,500-character prompt). Unicode digits need ``re``'s
    str semantics, so non-ASCII text takes the plain path.
    """
    if not text.isascii():
        return _NUM.findall(text)
    runs = text.encode("ascii").translate(_NUM_RUNS).split()
    return [m.decode("ascii") for m in _NUM_BYTES.findall(b" ".join(runs))]


def _has_negation(low: str) -> bool:
    """``_NEG.search(low)``, skipping the regex when none of its words occurs as a substring."""
    return any(w in low for w in _NEG_WORDS) and _NEG.search(low) is not None


_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_OPTION_LINE = re.compile(r"^[ \t]*\(?[A-Ha-h][.)][ \t].*$", re.M)


def dense_features(text: str) -> list[float]:
    """Handcrafted structure features of one (normalised, clipped) prompt, in DENSE_FEATURE_NAMES order.

    Written for speed, since this runs on every request: character classes are counted on the UTF-8
    bytes with ``bytes.translate`` (one C pass; ``str.translate`` is ~50x slower on non-ASCII text)
    and substrings with ``str.count``, never with Python loops over characters.
    """
    n_chars = len(text)
    words = text.split()
    n_words = len(words)
    nums = _numbers(text)
    opt_lines = _OPTION_LINE.findall(text)
    n_opt = len(opt_lines)
    opt_lens = [len(ln) for ln in opt_lines] or [0]
    mean_opt = sum(opt_lens) / len(opt_lens)
    sq_dev = 0.0  # added left to right, as sum() did before Python 3.12 (3.12 compensates; C does not)
    for x in opt_lens:
        sq_dev += (x - mean_opt) ** 2
    var_opt = sq_dev / len(opt_lens)
    first_opt = _OPTION.search(text)
    stem = text[: first_opt.start()] if first_opt else text
    low = text.lower()
    max_num = 0.0
    for nm in nums:
        with contextlib.suppress(ValueError):
            max_num = max(max_num, float(nm.replace(",", "")))
    raw = text.encode("utf-8", "ignore")
    n_digits = len(raw) - len(raw.translate(None, _DIGITS))
    n_upper = len(raw) - len(raw.translate(None, _UPPER))
    n_math = len(raw) - len(raw.translate(None, _MATH_CHARS))
    n_nonspace = len(raw) - raw.count(b" ") - raw.count(b"\n") - raw.count(b"\t")
    return [
        math.log1p(n_chars),
        math.log1p(n_words),
        math.log1p(text.count("\n")),
        math.log1p(len(nums)),
        math.log1p(len(set(nums))),
        n_digits / max(n_chars, 1),
        math.log1p(min(max_num, 1e12)),
        float(any("." in nm for nm in nums)),
        float(n_opt),
        math.log1p(mean_opt),
        math.sqrt(var_opt) / (mean_opt + 1.0),
        sum(1 for ln in opt_lines if _NUM.search(ln)) / max(n_opt, 1),
        math.log1p(len(stem)),
        float("statement 1" in low),
        float(_has_negation(stem.lower())),
        float("which of the following" in low),
        float("%" in text or "percent" in low),
        float(text.count("$")),
        float("refers to the following" in low or "passage" in low),
        float(text.count("?")),
        math.log1p(n_math + low.count("\\frac") + low.count("sqrt")),
        float(any(m in text for m in _ROMAN_MARKERS)),
        n_upper / max(n_chars, 1),
        math.log1p(sum(text.count(m) for m in _CODE_MARKERS)),
        float(" _ " in text or text.startswith("_ ")),
        float("write a function" in low or "write a python" in low),
        math.log1p(len(_SENT.findall(text))),
        n_nonspace / max(n_words, 1),
        float(low.count("answer:") - 1 if "answer:" in low else 0),
    ]


def _terms(text: str) -> list[str]:
    toks = _TOKEN.findall(text.lower())
    return toks + [a + " " + b for a, b in zip(toks, toks[1:], strict=False)]


@dataclass(frozen=True)
class PromptFeatures:
    """Features of one prompt: sparse TF-IDF (column indices, L2-normalised values) + standardised dense."""

    text_idx: np.ndarray
    text_val: np.ndarray
    dense: np.ndarray
    n_chars: int
    char: CharWords | None = None  # the character block's words and weights (router/char_ngrams.py)


@dataclass(frozen=True)
class _TermIndex:
    """The word vocabulary re-keyed by integers, so a prompt's terms are found with one dict lookup per
    token and vectorised arithmetic for the bigrams.

    Why: looking up ``a + " " + b`` strings costs a concatenation and a fresh string hash per bigram,
    ~0.3 ms on a 2,500-character prompt on the 2-core box. Here each token is hashed once; a bigram is
    the integer ``id(a) · T + id(b)`` looked up in a sorted array. Same columns, same counts.
    """

    token: dict[str, int]  # every token that occurs in the vocabulary, alone or inside a bigram
    uni_col: np.ndarray  # token id → column of the unigram, −1 when only its bigrams are in the vocabulary
    bi_key: np.ndarray  # sorted id(a) · T + id(b) of the vocabulary's bigrams
    bi_col: np.ndarray  # their columns
    table: object | None = None  # the same as C hash tables (router._fastfeat.TermTable), when built

    @classmethod
    def build(cls, vocab: dict[str, int]) -> _TermIndex:
        token: dict[str, int] = {}
        for term in vocab:
            for t in term.split(" "):
                token.setdefault(t, len(token))
        n_tok = len(token)
        uni_col = np.full(n_tok, -1, dtype=np.int64)
        keys, cols = [], []
        for term, col in vocab.items():
            a, sep, b = term.partition(" ")
            if sep:
                keys.append(token[a] * n_tok + token[b])
                cols.append(col)
            else:
                uni_col[token[a]] = col
        order = np.argsort(np.array(keys, dtype=np.int64), kind="stable")
        bi_key = np.array(keys, dtype=np.int64)[order]
        bi_col = np.array(cols, dtype=np.int64)[order]
        table = None
        if fastfeat is not None:
            with contextlib.suppress(ValueError):  # a vocabulary too large for its packed slots
                table = fastfeat.TermTable(list(token), uni_col, bi_key, bi_col)
        return cls(token=token, uni_col=uni_col, bi_key=bi_key, bi_col=bi_col, table=table)

    def counts(
        self, text: str, use_native: bool = True, low: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(distinct columns, sorted; how often each occurs) of the terms in ``text``: from the C tables
        when built, else ``np.unique`` of :meth:`columns` (the reference; same result). ``low``: the
        caller's ``text.lower()``, if it has one."""
        if use_native and self.table is not None:
            idx, tf = self.table.counts(text.lower() if low is None else low)  # type: ignore[attr-defined]
            return np.frombuffer(idx, dtype=np.int64), np.frombuffer(tf, dtype=np.int64)
        return np.unique(self.columns(text), return_counts=True)

    def columns(self, text: str) -> np.ndarray:
        """Vocabulary column of every unigram and bigram occurrence in ``text`` (with repeats)."""
        toks = _TOKEN.findall(text.lower())
        ids = np.fromiter(map(self.token.get, toks, repeat(-1)), dtype=np.int64, count=len(toks))
        uni = self.uni_col[ids[ids >= 0]]
        a, b = ids[:-1], ids[1:]
        ok = (a >= 0) & (b >= 0)
        key = a[ok] * len(self.uni_col) + b[ok]
        if not len(self.bi_key) or not len(key):
            return uni[uni >= 0]
        pos = np.minimum(np.searchsorted(self.bi_key, key), len(self.bi_key) - 1)
        hit = self.bi_key[pos] == key
        return np.concatenate([uni[uni >= 0], self.bi_col[pos[hit]]])


@dataclass
class TextFeaturizer:
    """Frozen featuriser (vocabulary, IDF, dense standardisation): everything needed to score offline.

    Plain attributes (dict + arrays) so it pickles small and is stable across sklearn versions.
    """

    vocab: dict[str, int]
    idf: np.ndarray
    dense_mean: np.ndarray
    dense_scale: np.ndarray
    dense_names: tuple[str, ...] = DENSE_FEATURE_NAMES
    version: int = 2  # 2: character block built word by word (CharNgrams)
    char: CharNgrams | None = None
    _empty_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.pop("_terms", None)  # derived from ``vocab`` on first use
        return state

    def _index(self) -> _TermIndex:
        index = self.__dict__.get("_terms")
        if index is None:
            index = self.__dict__["_terms"] = _TermIndex.build(self.vocab)
        return index

    def warm_up(self) -> None:
        """Build the word-term index now rather than on the first request."""
        self._index()

    @property
    def n_text(self) -> int:
        return len(self.idf)

    @property
    def n_dense(self) -> int:
        return len(self.dense_names)

    def featurize(self, prompt: str, use_native: bool = True) -> PromptFeatures:
        """One prompt → features. The decision-time path: the C featuriser when built (``use_native=False``:
        the Python reference, which gives the same features), then a few small numpy operations."""
        text = _clip(normalize_prompt(prompt))
        native = use_native and fastfeat is not None
        low = text.lower() if native else None  # shared by the C term counts and structure features
        idx, tf = self._index().counts(text, use_native, low)
        if len(idx):
            val = (1.0 + np.log(tf)) * self.idf[idx]
            norm = math.sqrt(float(val @ val))
            if norm > 0:
                val /= norm
        else:
            idx, val = self._empty_idx, np.zeros(0)
        raw = fastfeat.dense_features(text, low) if native else None  # type: ignore[union-attr]
        if raw is None:  # no extension, or a text it leaves to the reference
            raw = dense_features(text)
        dense = (np.asarray(raw) - self.dense_mean) / self.dense_scale
        if self.char is None:
            return PromptFeatures(idx, val, dense, len(prompt))
        return PromptFeatures(idx, val, dense, len(prompt), self.char.words(text, use_native))

    def featurize_many(self, prompts: Iterable[str]) -> list[PromptFeatures]:
        return [self.featurize(p) for p in prompts]

    def matrices(self, prompts: Sequence[str]) -> tuple[object, np.ndarray]:
        """Batch form for training/evaluation: (CSR text matrix n×V, dense array n×K)."""
        x, _, dense = self.blocks(self.featurize_many(prompts))
        return x, dense

    def blocks(self, feats: Sequence[PromptFeatures]) -> tuple[object, object, np.ndarray]:
        """(word CSR n×V, char CSR n×C — zero columns without a char block —, dense n×K) of features."""
        x = rows_to_csr([f.text_idx for f in feats], [f.text_val for f in feats], self.n_text)
        if self.char is not None:
            chars = [self.char.sparse(f.char) for f in feats]
            xc = rows_to_csr([c[0] for c in chars], [c[1] for c in chars], len(self.char.idf))
        else:
            xc = rows_to_csr([self._empty_idx] * len(feats), [np.zeros(0)] * len(feats), 0)
        dense = np.vstack([f.dense for f in feats]) if feats else np.zeros((0, self.n_dense))
        return x, xc, dense


def fit_featurizer(
    prompts: Sequence[str],
    min_df: int = 2,
    max_features: int = 60000,
    char_features: int = 0,
    char_labels: Sequence[str] | None = None,
) -> TextFeaturizer:
    """Fit vocabulary (document frequency ≥ ``min_df``, top ``max_features`` by df), IDF and dense scaling,
    and, when ``char_features`` > 0, a character n-gram block of that many columns (chosen by χ² against
    ``char_labels`` when given, see :func:`fit_char_ngrams`).

    IDF uses sklearn's smooth formula ``ln((1+n)/(1+df)) + 1``.
    """
    texts = [_clip(normalize_prompt(p)) for p in prompts]
    df: Counter[str] = Counter()
    for t in texts:
        df.update(set(_terms(t)))
    kept = [(c, term) for term, c in df.items() if c >= min_df]
    kept.sort(key=lambda x: (-x[0], x[1]))
    kept = kept[:max_features]
    kept.sort(key=lambda x: x[1])
    vocab = {term: i for i, (_, term) in enumerate(kept)}
    n = len(texts)
    idf = smooth_idf([c for c, _ in kept], n)
    dense = np.array([dense_features(t) for t in texts], dtype=np.float64).reshape(
        n, len(DENSE_FEATURE_NAMES)
    )
    mean = dense.mean(axis=0) if n else np.zeros(len(DENSE_FEATURE_NAMES))
    scale = dense.std(axis=0) if n else np.ones(len(DENSE_FEATURE_NAMES))
    scale = np.where(scale > 1e-9, scale, 1.0)
    char = fit_char_ngrams(texts, char_features, min_df, char_labels) if char_features > 0 else None
    return TextFeaturizer(vocab=vocab, idf=idf, dense_mean=mean, dense_scale=scale, char=char)
