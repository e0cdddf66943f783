"""Prompt featurisation for the learned router: pure, deterministic and cheap at decision time.

A prompt becomes two blocks:

* **text**: TF-IDF over lower-cased word uni- and bigrams. The vocabulary and IDF weights are fitted at
  training time and frozen into the artifact (a plain ``dict`` and a numpy array), so scoring one prompt
  is a regex, a few hundred dict look-ups and a normalisation — no sklearn call per request. We use a
  vocabulary rather than feature hashing because Python's ``hash`` is salted per process and a dict is
  as fast as a stable hash in pure Python; no collisions either.
* **char** (optional): TF-IDF over character 2–5-grams inside words (sklearn's ``char_wb``). Only the
  group prior (router/group_prior.py) reads it: subject inference gains ~4 points of accuracy on MMLU
  from sub-word evidence (``-itis``, ``-ase``, ``stoichio``) that the word vocabulary misses.
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

import numpy as np

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
# (p99 latency) while keeping the question and, for multiple choice, the options at the end.
HEAD_CHARS = 1800
TAIL_CHARS = 700

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
    nums = _NUM.findall(text)
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
        float(bool(_NEG.search(stem.lower()))),
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
    char_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    char_val: np.ndarray = field(default_factory=lambda: np.zeros(0))


_WORD = re.compile(r"\w+")


def _word_ngrams(word: str, n_min: int, n_max: int) -> list[str]:
    """Character n-grams of one word padded with spaces, as sklearn's ``char_wb`` analyser makes them."""
    w = " " + word + " "
    return [w[i : i + n] for n in range(n_min, n_max + 1) for i in range(len(w) - n + 1)]


@dataclass
class CharNgrams:
    """Frozen character n-gram TF-IDF (vocabulary + IDF), computed per distinct word with a word cache.

    Why a cache: a prompt has a few hundred distinct words but thousands of n-grams; words repeat
    across requests, so each word's n-gram indices are looked up once per process and a prompt costs
    one dict hit per distinct word plus a vectorised count (~0.1 ms on a 2,500-character prompt).
    """

    vocab: dict[str, int]
    idf: np.ndarray
    n_min: int = 2
    n_max: int = 5
    max_chars: int = 800  # head of the prompt only: the subject shows early; bounds p99 latency
    cache_size: int = 200_000
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_cache"] = {}  # a per-process memo, not part of the model
        return state

    def _word_indices(self, word: str) -> np.ndarray:
        hit = self._cache.get(word)
        if hit is None:
            get = self.vocab.get
            hit = np.array(
                [j for j in map(get, _word_ngrams(word, self.n_min, self.n_max)) if j is not None],
                dtype=np.int64,
            )
            if len(self._cache) < self.cache_size:
                self._cache[word] = hit
        return hit

    def vector(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(indices, L2-normalised sublinear TF-IDF values) of one normalised, clipped prompt."""
        words = Counter(_WORD.findall(text[: self.max_chars].lower()))
        if not words:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        parts = [self._word_indices(w) for w in words]
        lens = np.fromiter((len(a) for a in parts), dtype=np.int64, count=len(parts))
        if not lens.sum():
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        idx = np.concatenate(parts)
        weight = np.repeat(np.fromiter(words.values(), dtype=np.float64, count=len(words)), lens)
        uniq, inv = np.unique(idx, return_inverse=True)
        tf = np.bincount(inv, weights=weight)
        val = (1.0 + np.log(tf)) * self.idf[uniq]
        val /= math.sqrt(float(val @ val))
        return uniq, val


def fit_char_ngrams(texts: Sequence[str], max_features: int, min_df: int = 2) -> CharNgrams:
    """Vocabulary of the ``max_features`` most document-frequent in-word 2–5-grams (df ≥ ``min_df``)."""
    df: Counter[str] = Counter()
    head = CharNgrams.max_chars
    for t in texts:
        grams: set[str] = set()
        for w in set(_WORD.findall(t[:head].lower())):
            grams.update(_word_ngrams(w, 2, 5))
        df.update(grams)
    kept = sorted(((c, g) for g, c in df.items() if c >= min_df), key=lambda x: (-x[0], x[1]))[:max_features]
    kept.sort(key=lambda x: x[1])
    n = len(texts)
    idf = np.array([math.log((1 + n) / (1 + c)) + 1.0 for c, _ in kept], dtype=np.float64)
    return CharNgrams(vocab={g: i for i, (_, g) in enumerate(kept)}, idf=idf)


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
    version: int = 1
    char: CharNgrams | None = None
    _empty_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)

    @property
    def n_text(self) -> int:
        return len(self.idf)

    @property
    def n_dense(self) -> int:
        return len(self.dense_names)

    def featurize(self, prompt: str) -> PromptFeatures:
        """One prompt → features. The decision-time path: pure Python + tiny numpy ops."""
        text = _clip(normalize_prompt(prompt))
        counts = Counter([j for j in map(self.vocab.get, _terms(text)) if j is not None])
        if counts:
            idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            val = (1.0 + np.log(tf)) * self.idf[idx]
            norm = math.sqrt(float(val @ val))
            if norm > 0:
                val /= norm
        else:
            idx, val = self._empty_idx, np.zeros(0)
        dense = (np.asarray(dense_features(text)) - self.dense_mean) / self.dense_scale
        if self.char is None:
            return PromptFeatures(idx, val, dense, len(prompt))
        c_idx, c_val = self.char.vector(text)
        return PromptFeatures(idx, val, dense, len(prompt), c_idx, c_val)

    def featurize_many(self, prompts: Iterable[str]) -> list[PromptFeatures]:
        return [self.featurize(p) for p in prompts]

    def matrices(self, prompts: Sequence[str]) -> tuple[object, np.ndarray]:
        """Batch form for training/evaluation: (CSR text matrix n×V, dense array n×K)."""
        x, _, dense = self.blocks(self.featurize_many(prompts))
        return x, dense

    def blocks(self, feats: Sequence[PromptFeatures]) -> tuple[object, object, np.ndarray]:
        """(word CSR n×V, char CSR n×C — zero columns without a char block —, dense n×K) of features."""
        from scipy import sparse  # local: only offline paths need scipy

        def csr(idx: list[np.ndarray], val: list[np.ndarray], width: int) -> object:
            indptr = np.zeros(len(idx) + 1, dtype=np.int64)
            np.cumsum([len(i) for i in idx], out=indptr[1:])
            ind = np.concatenate(idx) if idx else np.zeros(0, np.int64)
            data = np.concatenate(val) if val else np.zeros(0)
            return sparse.csr_matrix((data, ind, indptr), shape=(len(idx), width))

        x = csr([f.text_idx for f in feats], [f.text_val for f in feats], self.n_text)
        n_char = len(self.char.idf) if self.char is not None else 0
        xc = csr([f.char_idx for f in feats], [f.char_val for f in feats], n_char)
        dense = np.vstack([f.dense for f in feats]) if feats else np.zeros((0, self.n_dense))
        return x, xc, dense


def fit_featurizer(
    prompts: Sequence[str], min_df: int = 2, max_features: int = 60000, char_features: int = 0
) -> TextFeaturizer:
    """Fit vocabulary (document frequency ≥ ``min_df``, top ``max_features`` by df), IDF and dense scaling,
    and, when ``char_features`` > 0, a character n-gram block of that many columns.

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
    idf = np.array([math.log((1 + n) / (1 + c)) + 1.0 for c, _ in kept], dtype=np.float64)
    dense = np.array([dense_features(t) for t in texts], dtype=np.float64).reshape(
        n, len(DENSE_FEATURE_NAMES)
    )
    mean = dense.mean(axis=0) if n else np.zeros(len(DENSE_FEATURE_NAMES))
    scale = dense.std(axis=0) if n else np.ones(len(DENSE_FEATURE_NAMES))
    scale = np.where(scale > 1e-9, scale, 1.0)
    char = fit_char_ngrams(texts, char_features, min_df) if char_features > 0 else None
    return TextFeaturizer(vocab=vocab, idf=idf, dense_mean=mean, dense_scale=scale, char=char)
