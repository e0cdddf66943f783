"""Prompt featurisation for the learned router: pure Python and numpy at decision time, one implementation.

A prompt (normalised, then clipped to its head and tail) becomes two blocks:

* **text**: TF-IDF over lower-cased word unigrams and bigrams (:func:`terms`), sublinear term frequency,
  L2-normalised. The vocabulary and IDF weights are fitted by scikit-learn's ``TfidfVectorizer`` at
  training time (with :func:`terms` as its analyzer) and frozen into the artifact as arrays, so scoring
  one prompt is a regular expression, a few hundred dictionary look-ups and a normalisation.
* **dense** (optional; off in the default router): handcrafted structure features (length, digits,
  multiple-choice options, negations, code markers, blanks, …), standardised with means and scales
  frozen at training time. The answer verifier (router/verifier.py) reads them too.

Only the prompt text is used (never model answers); metadata such as the MMLU subject is not given at
routing time, so any such signal must come from the text itself.
"""

from __future__ import annotations

import ast
import contextlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np

__all__ = [
    "normalize_prompt",
    "clip_prompt",
    "terms",
    "DENSE_FEATURE_NAMES",
    "dense_features",
    "PromptFeatures",
    "TextFeaturizer",
    "fit_featurizer",
]

# Long prompts are cut to their head and tail before featurisation: it bounds the decision-time cost
# (p99 latency) while keeping the question and, for multiple choice, the options at the end.
HEAD_CHARS = 1000
TAIL_CHARS = 600

_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
_NUM = re.compile(r"\d+(?:[.,]\d+)*")
_OPTION = re.compile(r"^\s*\(?([A-Ha-h])[.)]\s", re.M)
_NEG = re.compile(r"\b(?:not|except|least|false|incorrect|never)\b")
# substring counts instead of alternation regexes, which cost ~0.1-0.3 ms on long prompts
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


def clip_prompt(text: str) -> str:
    """The head and tail of a long prompt (the whole prompt when it is short)."""
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
    var_opt = sum((x - mean_opt) ** 2 for x in opt_lens) / len(opt_lens)
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


def terms(text: str) -> list[str]:
    """Word unigrams and bigrams of ``text`` (lower-cased; punctuation marks are tokens of their own)."""
    toks = _TOKEN.findall(text.lower())
    return toks + list(map(" ".join, zip(toks, toks[1:], strict=False)))


@dataclass(frozen=True)
class PromptFeatures:
    """Features of one prompt: sparse TF-IDF (column indices, L2-normalised values) + standardised dense."""

    text_idx: np.ndarray
    text_val: np.ndarray
    dense: np.ndarray
    n_chars: int


@dataclass
class TextFeaturizer:
    """Frozen featuriser: vocabulary (term → column), IDF weights, dense standardisation.

    ``dense_mean``/``dense_scale`` are empty when the model uses no structure features.
    """

    vocab: dict[str, int]
    idf: np.ndarray
    dense_mean: np.ndarray
    dense_scale: np.ndarray

    @property
    def n_text(self) -> int:
        return len(self.idf)

    @property
    def n_dense(self) -> int:
        return len(self.dense_mean)

    def featurize(self, prompt: str) -> PromptFeatures:
        """One prompt → features; the decision-time path (the same arithmetic as sklearn's transform)."""
        text = clip_prompt(normalize_prompt(prompt))
        ts = terms(text)
        cols = np.fromiter(map(self.vocab.get, ts, repeat(-1)), dtype=np.int64, count=len(ts))
        cols = np.sort(cols[cols >= 0])
        if len(cols):
            # the distinct columns and their counts, as np.unique(return_counts=True) with fewer calls
            first = np.empty(len(cols), dtype=bool)
            first[0] = True
            np.not_equal(cols[1:], cols[:-1], out=first[1:])
            idx = cols[first]
            tf = np.diff(np.append(np.flatnonzero(first), len(cols)))
            val = (1.0 + np.log(tf)) * self.idf[idx]
            val /= math.sqrt(float(val @ val))
        else:
            idx, val = cols, np.zeros(0)
        if self.n_dense:
            dense = (np.array(dense_features(text)) - self.dense_mean) / self.dense_scale
        else:
            dense = self.dense_mean
        return PromptFeatures(idx, val, dense, len(prompt))

    def matrices(self, prompts: Sequence[str]) -> tuple[object, np.ndarray]:
        """Batch form for training and evaluation: (CSR text matrix n×V, dense array n×K)."""
        from scipy import sparse  # offline only

        feats = [self.featurize(p) for p in prompts]
        indptr = np.zeros(len(feats) + 1, dtype=np.int64)
        np.cumsum([len(f.text_idx) for f in feats], out=indptr[1:])
        ind = np.concatenate([f.text_idx for f in feats]) if feats else np.zeros(0, np.int64)
        data = np.concatenate([f.text_val for f in feats]) if feats else np.zeros(0)
        x = sparse.csr_matrix((data, ind, indptr), shape=(len(feats), self.n_text))
        dense = np.vstack([f.dense for f in feats]) if feats else np.zeros((0, self.n_dense))
        return x, dense.reshape(len(feats), self.n_dense)


def fit_featurizer(
    prompts: Sequence[str], min_df: int = 2, max_features: int = 60000, dense: bool = True
) -> TextFeaturizer:
    """Fit the vocabulary (document frequency ≥ ``min_df``, the ``max_features`` most frequent terms) and
    IDF with scikit-learn's ``TfidfVectorizer`` (smooth IDF, sublinear tf), and the dense features'
    standardisation with ``StandardScaler`` (``dense=False``: no dense block). Offline only."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import StandardScaler

    texts = [clip_prompt(normalize_prompt(p)) for p in prompts]
    vec = TfidfVectorizer(analyzer=terms, min_df=min_df, max_features=max_features, sublinear_tf=True)
    try:
        vec.fit(texts)
        vocab = {str(t): int(c) for t, c in vec.vocabulary_.items()}
        idf = np.asarray(vec.idf_, dtype=np.float64)
    except ValueError:  # no term reaches min_df (tiny data): an empty text block
        vocab, idf = {}, np.zeros(0)
    if dense and texts:
        scaler = StandardScaler().fit(np.array([dense_features(t) for t in texts], dtype=np.float64))
        mean, scale = scaler.mean_.copy(), scaler.scale_.copy()
    else:
        mean, scale = np.zeros(0), np.ones(0)
    return TextFeaturizer(vocab=vocab, idf=idf, dense_mean=mean, dense_scale=scale)
