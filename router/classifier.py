"""Per-candidate-model quality classifier: p(answer acceptable | prompt) for every model, and selectors.

Pure (no I/O, no clock, no randomness). Everything fitted is frozen into numpy arrays so that one
decision is a sparse dot product plus, optionally, a vectorised walk over a small tree ensemble — no
per-call scikit-learn overhead (sklearn is only used offline, in ``router.offline.train``).

Model, two levels:

1. **linear heads**: one logistic regression per model over [TF-IDF | standardised dense] features.
2. **stacker** (optional): per model, gradient-boosted trees over [dense features, the linear heads'
   logits for all models]; trained on out-of-fold linear logits so it learns how much to trust them.
   On RouteLLM data the structure features carry as much signal as the words, and trees capture their
   interactions (length × options × numbers) that a linear head cannot.
3. **pair gap** (optional, two-model data): a tree model of E[strong ok − weak ok | x] fitted directly,
   because routing quality (APGR) depends only on ranking that difference; blended with the linear
   heads' ``p_strong − p_weak`` with a weight chosen on out-of-fold training predictions. Reported probabilities keep
   ``p_strong − p_weak`` exactly equal to the predicted gap (see :meth:`QualityClassifier.predict_array`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from router.features import PromptFeatures, TextFeaturizer
from router.group_prior import GroupPrior
from router.native import fastfeat

__all__ = [
    "CompiledTrees",
    "TreeBundle",
    "bundle_trees",
    "compile_hist_gb",
    "CostModel",
    "QualityClassifier",
    "logit",
    "sigmoid",
    "cheapest_above",
    "best_tradeoff",
    "calibrate_gap_threshold",
    "calibrate_quality_threshold",
]


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function, clipped so extreme logits neither overflow nor underflow."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


def _scalar_sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-min(max(z, -40.0), 40.0)))


def logit(p: np.ndarray) -> np.ndarray:
    """Clipped log-odds (the stackers see priors on the same scale as the heads' logits)."""
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


@dataclass
class CompiledTrees:
    """A fitted tree ensemble flattened into arrays (all trees share one node table).

    Prediction walks every tree at once, one numpy step per depth level, which keeps a 200-tree model at
    a few tens of microseconds per prompt.
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    is_leaf: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    baseline: float
    max_depth: int

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """The leaf each tree sends one feature vector to."""
        node = self.roots
        for _ in range(self.max_depth):
            go_left = x[self.feature[node]] <= self.threshold[node]
            nxt = np.where(go_left, self.left[node], self.right[node])
            node = np.where(self.is_leaf[node], node, nxt)
        return node

    def raw(self, x: np.ndarray) -> float:
        """Sum of leaf values + baseline for one feature vector."""
        return float(self.baseline + self.value[self.leaves(x)].sum())

    def raw_many(self, x: np.ndarray) -> np.ndarray:
        """Row-wise :meth:`raw` for a 2-D array (offline evaluation)."""
        node = np.broadcast_to(self.roots, (x.shape[0], len(self.roots))).copy()
        rows = np.arange(x.shape[0])[:, None]
        for _ in range(self.max_depth):
            go_left = x[rows, self.feature[node]] <= self.threshold[node]
            nxt = np.where(go_left, self.left[node], self.right[node])
            node = np.where(self.is_leaf[node], node, nxt)
        return self.baseline + self.value[node].sum(axis=1)


@dataclass
class TreeBundle:
    """Several ensembles laid out as complete binary trees in heap order and walked together.

    Why: a decision evaluates up to a dozen ensembles (per-model stackers, the gap model) over the same
    input. Walking them one by one pays numpy's per-call overhead a dozen times, and the node-table
    walk of :class:`CompiledTrees` needs nine array operations per level. In heap order (children of
    position ``k`` at ``2k+1``, ``2k+2``) a level is four: gather feature and threshold, compare,
    step. A leaf shallower than the deepest tree is padded with always-left splits down to the bottom.
    """

    feature: np.ndarray  # (T · (2^D − 1),) split feature of every internal position, per tree
    threshold: np.ndarray  # same shape; +inf for padding (x ≤ inf: always left)
    leaf_value: np.ndarray  # (T · 2^D,)
    depth: int
    owner: np.ndarray  # (T,) the ensemble each tree belongs to
    baselines: np.ndarray  # (E,)
    _root: np.ndarray = field(init=False, repr=False)  # position of every tree's root
    _leaf0: np.ndarray = field(init=False, repr=False)  # index of every tree's first leaf, minus 2^D − 1
    _walker: object | None = field(init=False, repr=False, default=None)  # router._fastfeat.TreeWalker

    def __post_init__(self) -> None:
        n_int = (1 << self.depth) - 1
        tree = np.arange(len(self.leaf_value) >> self.depth, dtype=np.int64)
        self._root = tree * n_int
        self._leaf0 = (tree << self.depth) - n_int
        if fastfeat is not None:
            self._walker = fastfeat.TreeWalker(
                self.feature, self.threshold, self.leaf_value, self.depth, self.owner, self.baselines
            )

    def raw(self, x: np.ndarray, use_native: bool = True) -> np.ndarray:
        """(E,) raw scores of every ensemble for one input vector: walked in C when the extension is built
        (~5 µs against ~35 for the numpy levels below; the same sums in the same order, bit-equal)."""
        if use_native and self._walker is not None and x.dtype == np.float64 and x.flags.c_contiguous:
            return np.frombuffer(self._walker.raw(x), dtype=np.float64)  # type: ignore[attr-defined]
        pos = np.zeros(len(self._root), dtype=np.int64)
        for _ in range(self.depth):
            k = self._root + pos
            pos = 2 * pos + 1 + (x[self.feature[k]] > self.threshold[k])
        leaves = self.leaf_value[self._leaf0 + pos]
        return self.baselines + np.bincount(self.owner, weights=leaves, minlength=len(self.baselines))


def bundle_trees(ensembles: Sequence[CompiledTrees], columns: Sequence[np.ndarray | None]) -> TreeBundle:
    """Join ``ensembles``; ``columns[e]`` maps ensemble e's feature index to the shared input (None: same)."""
    depth = max([1] + [t.max_depth for t in ensembles])
    n_int, n_leaf = (1 << depth) - 1, 1 << depth
    n_trees = sum(len(t.roots) for t in ensembles)
    feature = np.zeros(n_trees * n_int, dtype=np.int64)
    threshold = np.full(n_trees * n_int, np.inf)
    leaf_value = np.zeros(n_trees * n_leaf)
    owner = np.zeros(n_trees, dtype=np.int64)
    tree = 0

    def fill(t: CompiledTrees, cols: np.ndarray | None, node: int, pos: int, level: int) -> None:
        if level == depth:
            leaf_value[tree * n_leaf + pos - n_int] = t.value[node]
            return
        if t.is_leaf[node]:  # padding: both children repeat this leaf
            fill(t, cols, node, 2 * pos + 1, level + 1)
            fill(t, cols, node, 2 * pos + 2, level + 1)
            return
        f = int(t.feature[node])
        feature[tree * n_int + pos] = f if cols is None else int(cols[f])
        threshold[tree * n_int + pos] = t.threshold[node]
        fill(t, cols, int(t.left[node]), 2 * pos + 1, level + 1)
        fill(t, cols, int(t.right[node]), 2 * pos + 2, level + 1)

    for e, (t, cols) in enumerate(zip(ensembles, columns, strict=True)):
        for root in t.roots.tolist():
            owner[tree] = e
            fill(t, cols, root, 0, 0)
            tree += 1
    return TreeBundle(
        feature,
        threshold,
        leaf_value,
        depth,
        owner,
        np.array([t.baseline for t in ensembles]),
    )


def compile_hist_gb(est: object) -> CompiledTrees:
    """Flatten a fitted sklearn ``HistGradientBoosting{Regressor,Classifier}`` (binary / regression).

    Reads the public-by-convention node tables of its predictors; the result is checked against
    ``est.decision_function``/``predict`` in the tests. Missing values never occur in our features.
    """
    predictors = est._predictors  # type: ignore[attr-defined]
    feats, thr, lefts, rights, leaf, vals, roots = [], [], [], [], [], [], []
    offset = 0
    depth = 0
    for it in predictors:
        nodes = it[0].nodes
        roots.append(offset)
        feats.append(nodes["feature_idx"].astype(np.int64))
        thr.append(nodes["num_threshold"].astype(np.float64))
        lefts.append(nodes["left"].astype(np.int64) + offset)
        rights.append(nodes["right"].astype(np.int64) + offset)
        leaf.append(nodes["is_leaf"].astype(bool))
        vals.append(np.where(nodes["is_leaf"], nodes["value"], 0.0).astype(np.float64))
        depth = max(depth, int(nodes["depth"].max()))
        offset += len(nodes)
    baseline = float(np.ravel(est._baseline_prediction)[0])  # type: ignore[attr-defined]
    return CompiledTrees(
        feature=np.concatenate(feats),
        threshold=np.concatenate(thr),
        left=np.concatenate(lefts),
        right=np.concatenate(rights),
        is_leaf=np.concatenate(leaf),
        value=np.concatenate(vals),
        roots=np.array(roots, dtype=np.int64),
        baseline=baseline,
        max_depth=depth,
    )


@dataclass
class CostModel:
    """Expected USD per request for each model: ``base[j] + per_char[j] · prompt_chars``.

    Prompt price scales with input tokens, and the answer length is roughly constant per task, so a
    per-model affine function of the prompt length is a cheap, decent predictor.
    """

    models: list[str]
    base: np.ndarray
    per_char: np.ndarray

    def predict(self, n_chars: int) -> np.ndarray:
        return np.maximum(self.base + self.per_char * float(n_chars), 0.0)

    def as_dict(self, n_chars: int) -> dict[str, float]:
        return dict(zip(self.models, self.predict(n_chars).tolist(), strict=True))


@dataclass
class QualityClassifier:
    """Frozen router model. ``predict(prompt)`` → ``{model: p_acceptable}``.

    Attributes are plain arrays so the object pickles compactly and scores without sklearn.
    """

    featurizer: TextFeaturizer
    models: list[str]
    text_coef: np.ndarray  # (V, M[+1]) linear heads, text block (+ optional joint "easiness" head)
    dense_coef: np.ndarray  # (K, M) linear heads, dense block
    intercept: np.ndarray  # (M,)
    stackers: list[CompiledTrees] | None = None  # per model, over [dense, linear logits]
    stack_mask: list[bool] | None = None  # per model: use its stacker (True) or its linear head
    gap: CompiledTrees | None = None  # E[strong − weak] over the same inputs (two-model only)
    strong: str | None = None
    weak: str | None = None
    svd: np.ndarray | None = None  # (V, r) LSA projection of the TF-IDF block, extra stacker input
    gap_blend: float = 0.0  # weight of the linear heads' p_s − p_w in the gap (rest: tree gap model)
    group_prior: GroupPrior | None = None  # inferred subject/task → per-model accuracy prior
    gap_on_prior: bool = False  # tree gap model is a residual on top of the group prior's gap
    gap_tree_scale: float = 1.0  # weight of that residual
    gap_inputs: np.ndarray | None = None  # columns of the stack input the gap model reads (None: all)
    prior_weight: np.ndarray | None = None  # (M,) shrinkage of each model's probability to its group prior
    cost_model: CostModel | None = None
    metadata: dict[str, object] = field(default_factory=dict)

    # ---- decision-time path ------------------------------------------------------------------------

    def features(self, prompt: str) -> PromptFeatures:
        return self.featurizer.featurize(prompt)

    def linear_logits(self, f: PromptFeatures) -> np.ndarray:
        """Linear heads' logits (M,): sparse rows of the coefficient matrix times the TF-IDF values."""
        z = self.intercept + f.dense @ self.dense_coef
        if len(f.text_idx):
            z = z + f.text_val @ self.text_coef[f.text_idx]
        return z

    def stack_input(self, f: PromptFeatures, lin: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        """Stacker input: [dense, linear logits(, group-prior logits)(, LSA components of the TF-IDF)]."""
        parts = [f.dense, lin]
        if prior is not None:
            parts.append(logit(prior))
        if self.svd is not None:
            parts.append(
                f.text_val @ self.svd[f.text_idx] if len(f.text_idx) else np.zeros(self.svd.shape[1])
            )
        return np.concatenate(parts)

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.pop("_bundle", None)  # derived from the fitted trees on first use; not part of the artifact
        return state

    def _tree_bundle(self) -> tuple[TreeBundle, np.ndarray, np.ndarray]:
        """All ensembles a decision walks (the used stackers, then the gap model) as one bundle, and per
        model whether its stacker is used and its slot in the bundle's output."""
        cached = self.__dict__.get("_bundle")
        if cached is not None:
            return cached
        ensembles: list[CompiledTrees] = []
        columns: list[np.ndarray | None] = []
        slots = [-1] * len(self.models)
        if self.stackers is not None:
            mask = self.stack_mask or [True] * len(self.stackers)
            for j, (t, use) in enumerate(zip(self.stackers, mask, strict=True)):
                if use:
                    slots[j] = len(ensembles)
                    ensembles.append(t)
                    columns.append(None)
        if self.gap is not None:
            ensembles.append(self.gap)
            columns.append(self.gap_inputs)
        slot = np.array(slots, dtype=np.int64)
        self.__dict__["_bundle"] = (bundle_trees(ensembles, columns), slot >= 0, np.maximum(slot, 0))
        return self.__dict__["_bundle"]

    def warm_up(self) -> None:
        """Build now what the first decisions would otherwise build on the request path: the word-term
        index, the tree bundle and the group prior's per-word table for the training vocabulary.
        Called when an artifact is loaded (router.offline.artifacts.load_artifact)."""
        self.featurizer.warm_up()
        self._tree_bundle()
        if self.group_prior is not None:
            self.group_prior.prefill()

    def predict_array(self, f: PromptFeatures) -> np.ndarray:
        """Probabilities in ``self.models`` order.

        With a pair-gap model, ``p_weak`` comes from its head and ``p_strong = p_weak + gap``; if that
        leaves [0, 1] both are shifted together so the difference (the routing signal) stays exact.
        """
        lin = self.linear_logits(f)
        prior = self.group_prior.model_prior(f) if self.group_prior is not None else None
        logits, gap_raw = lin[: len(self.models)], None
        if self.stackers is not None or self.gap is not None:
            bundle, use, slot = self._tree_bundle()
            raw = bundle.raw(self.stack_input(f, lin, prior))
            if use.any():
                logits = np.where(use, raw[slot], logits)
            if self.gap is not None:
                gap_raw = float(raw[-1])
        p = sigmoid(logits)
        if self.prior_weight is not None and prior is not None:
            p = (1.0 - self.prior_weight) * p + self.prior_weight * prior
        if gap_raw is not None and self.strong is not None and self.weak is not None:
            i_s, i_w = self.models.index(self.strong), self.models.index(self.weak)
            g = self.gap_tree_scale * gap_raw
            if self.gap_on_prior and prior is not None:
                g += float(prior[i_s] - prior[i_w])
            if self.gap_blend:
                d = _scalar_sigmoid(float(lin[i_s])) - _scalar_sigmoid(float(lin[i_w]))
                g = self.gap_blend * d + (1.0 - self.gap_blend) * g
            g = min(max(g, -1.0), 1.0)
            pw = float(p[i_w])
            ps = pw + g
            if ps > 1.0:
                ps, pw = 1.0, 1.0 - g
            elif ps < 0.0:
                ps, pw = 0.0, -g
            p[i_s], p[i_w] = ps, pw  # p is this call's own array (sigmoid and the prior mix make new ones)
        return p

    def predict(self, prompt_or_features: str | PromptFeatures) -> dict[str, float]:
        """``{model: p_acceptable}`` for one prompt (or precomputed features)."""
        f = (
            prompt_or_features
            if isinstance(prompt_or_features, PromptFeatures)
            else self.featurizer.featurize(prompt_or_features)
        )
        return dict(zip(self.models, self.predict_array(f).tolist(), strict=True))

    def predict_many(self, prompts: Sequence[str]) -> np.ndarray:
        """(n, M) probabilities; offline/batch convenience (same arithmetic as :meth:`predict`)."""
        return np.vstack([self.predict_array(self.featurizer.featurize(p)) for p in prompts]).reshape(
            len(prompts), len(self.models)
        )

    def gap_score(self, probs: Mapping[str, float] | np.ndarray) -> float:
        """Two-model routing score ``p_strong − p_weak`` (higher → strong model more worth its price)."""
        if self.strong is None or self.weak is None:
            raise ValueError("not a two-model classifier")
        if isinstance(probs, np.ndarray):
            return float(probs[self.models.index(self.strong)] - probs[self.models.index(self.weak)])
        return float(probs[self.strong] - probs[self.weak])


# ---- selectors (pure functions over probabilities and costs) -------------------------------------


def cheapest_above(probs: Mapping[str, float], costs: Mapping[str, float], threshold: float) -> str:
    """Cheapest model whose predicted quality clears ``threshold``; the most likely model if none does.

    Why the fallback: refusing to route is never an option for a gateway, and when nothing is predicted
    good enough the best bet is the model most likely to be acceptable.
    """
    ok = [m for m, p in probs.items() if p >= threshold and m in costs]
    if ok:
        return min(ok, key=lambda m: (costs[m], -probs[m], m))
    return max(probs, key=lambda m: (probs[m], -costs.get(m, math.inf), m))


def best_tradeoff(probs: Mapping[str, float], costs: Mapping[str, float], lam: float) -> str:
    """``argmax_m p_m − λ·cost_m`` (λ in quality points per USD); ties go to the cheaper model."""
    return max(probs, key=lambda m: (probs[m] - lam * costs.get(m, 0.0), -costs.get(m, 0.0), m))


def calibrate_gap_threshold(gap_scores: Sequence[float] | np.ndarray, target_strong_share: float) -> float:
    """Threshold on ``p_strong − p_weak`` so that about ``target_strong_share`` of traffic goes strong.

    Uses the empirical quantile of scores on representative (unlabeled) traffic: route strong iff
    ``gap >= threshold``.
    """
    s = np.sort(np.asarray(gap_scores, dtype=float))[::-1]
    if len(s) == 0:
        raise ValueError("no scores")
    k = int(round(min(max(target_strong_share, 0.0), 1.0) * len(s)))
    if k <= 0:
        return float(np.nextafter(s[0], np.inf))
    return float(s[min(k, len(s)) - 1])


def calibrate_quality_threshold(
    probs: np.ndarray,
    costs: np.ndarray,
    strong_index: int,
    target_strong_share: float,
    iters: int = 40,
) -> float:
    """Threshold for :func:`cheapest_above` giving ~``target_strong_share`` of calls to the strong model.

    ``probs``/``costs`` are (n, M) arrays on representative traffic. A higher threshold sends more
    traffic to the expensive, better model; the share is monotone enough in practice for bisection.
    """

    def share(t: float) -> float:
        ok = probs >= t
        c = np.where(ok, costs, np.inf)
        choice = np.argmin(c, axis=1)
        none = ~ok.any(axis=1)
        choice[none] = np.argmax(probs[none], axis=1)
        return float(np.mean(choice == strong_index))

    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if share(mid) < target_strong_share:
            lo = mid
        else:
            hi = mid
    return hi
