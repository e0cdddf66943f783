"""Readers for the labeled routing datasets in ``shared/data/routing`` (file I/O lives here only).

Two formats are understood, detected from the CSV header:

* **routellm** (two models): ``[subject,] prompt, <weak>, <strong>[, <model>_response...]`` with
  ``True``/``False`` correctness per model.
* **routerbench** (eleven models): ``sample_id, prompt, eval_name, <model>...`` (0/1 correctness,
  empty/NaN = unknown), ``<model>|model_response``, ``<model>|total_cost`` (USD), ``oracle_model_to_route_to``.

Model answers (``*_response`` / ``|model_response``) are never read into the dataset: they are not
available at routing time, so keeping them out of the object makes leaking them into features
impossible by construction.
"""

from __future__ import annotations

import csv
import hashlib
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from router.features import normalize_prompt

# RouteLLM's pair; used to orient two-model data (strong/weak) when the header allows it.
ROUTELLM_STRONG = "gpt-4-1106-preview"
ROUTELLM_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"

_NON_MODEL_COLUMNS = {"", "subject", "prompt", "sample_id", "eval_name", "oracle_model_to_route_to", "id"}


def default_data_dir() -> Path:
    """``$HYBRIDGATE_ROUTING_DATA`` when set, else ``<repo>/../shared/data/routing`` (the shared data
    beside the repository checkout)."""
    env = os.environ.get("HYBRIDGATE_ROUTING_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "routing"


@dataclass
class LabeledDataset:
    """Prompts with per-model correctness labels (and optionally per-prompt USD costs).

    ``labels[i, j]`` is 1.0/0.0 for correct/incorrect and NaN when unknown; ``costs[i, j]`` is the USD
    cost of sending prompt ``i`` to model ``j`` (None for data without costs).
    """

    name: str
    prompts: list[str]
    models: list[str]
    labels: np.ndarray
    costs: np.ndarray | None = None
    subjects: list[str] | None = None
    tasks: list[str] | None = None
    ids: list[str] = field(default_factory=list)
    source_hashes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ids:
            self.ids = [str(i) for i in range(len(self.prompts))]
        n, m = len(self.prompts), len(self.models)
        if self.labels.shape != (n, m):
            raise ValueError(f"labels shape {self.labels.shape} != ({n}, {m})")
        if self.costs is not None and self.costs.shape != (n, m):
            raise ValueError(f"costs shape {self.costs.shape} != ({n}, {m})")

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def strong_weak(self) -> tuple[str, str] | None:
        """(strong, weak) for RouteLLM-style two-model data, else None."""
        if set(self.models) == {ROUTELLM_STRONG, ROUTELLM_WEAK}:
            return ROUTELLM_STRONG, ROUTELLM_WEAK
        if len(self.models) == 2:
            acc = np.nanmean(self.labels, axis=0)
            hi = int(np.argmax(acc))
            return self.models[hi], self.models[1 - hi]
        return None

    def subset(self, idx: Sequence[int] | np.ndarray) -> LabeledDataset:
        """Rows ``idx`` as a new dataset (same models, same source hashes)."""
        idx = np.asarray(idx, dtype=int)
        return LabeledDataset(
            name=self.name,
            prompts=[self.prompts[i] for i in idx],
            models=list(self.models),
            labels=self.labels[idx],
            costs=None if self.costs is None else self.costs[idx],
            subjects=None if self.subjects is None else [self.subjects[i] for i in idx],
            tasks=None if self.tasks is None else [self.tasks[i] for i in idx],
            ids=[self.ids[i] for i in idx],
            source_hashes=dict(self.source_hashes),
        )


def file_sha256(path: Path) -> str:
    """Content hash recorded in artifact manifests, so a model can be traced to its exact data."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse_label(raw: str) -> float:
    v = raw.strip().lower()
    if v in ("true", "1", "1.0", "yes"):
        return 1.0
    if v in ("false", "0", "0.0", "no"):
        return 0.0
    if v in ("", "nan", "none", "null"):
        return float("nan")
    try:
        return float(v)
    except ValueError:
        return float("nan")


def _parse_cost(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        return float("nan")


def _raise_csv_limit() -> None:
    # Some prompts are long (few-shot Winogrande); the default 128 KiB field limit is enough today,
    # but a larger limit costs nothing and avoids a confusing failure on other exports.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def read_csv(path: str | Path) -> LabeledDataset:
    """Read one labeled CSV of either format (detected from its header)."""
    _raise_csv_limit()
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    if any(h.endswith("|total_cost") for h in header):
        ds = _read_routerbench(path.stem, header, rows)
    else:
        ds = _read_routellm(path.stem, header, rows)
    ds.source_hashes = {path.name: file_sha256(path)}
    return ds


def _read_routellm(name: str, header: list[str], rows: list[list[str]]) -> LabeledDataset:
    col = {h: i for i, h in enumerate(header)}
    models = [
        h for h in header if h not in _NON_MODEL_COLUMNS and not h.endswith("_response") and "|" not in h
    ]
    if "prompt" not in col or not models:
        raise ValueError(f"{name}: not a routellm-format CSV (header {header[:6]})")
    prompts = [r[col["prompt"]] for r in rows]
    labels = np.array([[_parse_label(r[col[m]]) for m in models] for r in rows], dtype=float).reshape(
        len(rows), len(models)
    )
    subjects = [r[col["subject"]] for r in rows] if "subject" in col else None
    return LabeledDataset(
        name=name,
        prompts=prompts,
        models=models,
        labels=labels,
        subjects=subjects,
        tasks=[name] * len(rows),
        ids=[f"{name}:{i}" for i in range(len(rows))],
    )


def _read_routerbench(name: str, header: list[str], rows: list[list[str]]) -> LabeledDataset:
    col = {h: i for i, h in enumerate(header)}
    models = [h[: -len("|total_cost")] for h in header if h.endswith("|total_cost")]
    missing = [m for m in models if m not in col]
    if missing:
        raise ValueError(f"{name}: cost columns without label columns: {missing}")
    prompts = [normalize_prompt(r[col["prompt"]]) for r in rows]
    labels = np.array([[_parse_label(r[col[m]]) for m in models] for r in rows], dtype=float).reshape(
        len(rows), len(models)
    )
    costs = np.array(
        [[_parse_cost(r[col[m + "|total_cost"]]) for m in models] for r in rows], dtype=float
    ).reshape(len(rows), len(models))
    tasks = [r[col["eval_name"]] for r in rows] if "eval_name" in col else [name] * len(rows)
    ids = (
        [r[col["sample_id"]] for r in rows]
        if "sample_id" in col
        else [f"{name}:{i}" for i in range(len(rows))]
    )
    return LabeledDataset(
        name=name, prompts=prompts, models=models, labels=labels, costs=costs, tasks=tasks, ids=ids
    )


def concat(datasets: Iterable[LabeledDataset], name: str | None = None) -> LabeledDataset:
    """Stack datasets with the same model set (columns are aligned by model name)."""
    dss = list(datasets)
    if not dss:
        raise ValueError("nothing to concatenate")
    models = list(dss[0].models)
    for d in dss[1:]:
        if set(d.models) != set(models):
            raise ValueError(f"model sets differ: {d.name}")

    def aligned(d: LabeledDataset, arr: np.ndarray) -> np.ndarray:
        order = [d.models.index(m) for m in models]
        return arr[:, order]

    labels = np.vstack([aligned(d, d.labels) for d in dss])
    costs = None
    if all(d.costs is not None for d in dss):
        costs = np.vstack([aligned(d, d.costs) for d in dss])  # type: ignore[arg-type]
    subjects = None
    if any(d.subjects is not None for d in dss):
        subjects = [s for d in dss for s in (d.subjects or [""] * len(d))]
    tasks = [t for d in dss for t in (d.tasks or [d.name] * len(d))]
    hashes: dict[str, str] = {}
    for d in dss:
        hashes.update(d.source_hashes)
    return LabeledDataset(
        name=name or "+".join(d.name for d in dss),
        prompts=[p for d in dss for p in d.prompts],
        models=models,
        labels=labels,
        costs=costs,
        subjects=subjects,
        tasks=tasks,
        ids=[i for d in dss for i in d.ids],
        source_hashes=hashes,
    )


def read_many(paths: Sequence[str | Path]) -> LabeledDataset:
    """Read and stack several CSVs of one format (e.g. the three RouterBench tasks)."""
    return concat([read_csv(p) for p in paths])


def routerbench_paths(data_dir: Path | None = None) -> list[Path]:
    d = (data_dir or default_data_dir()) / "routerbench"
    return [d / f"{t}_train.csv" for t in ("arc_challenge", "mbpp", "winograde")]


def routellm_path(which: str, data_dir: Path | None = None) -> Path:
    return (data_dir or default_data_dir()) / "routellm" / f"{which}_dev.csv"


def stratified_split(
    strata: Sequence[object], test_fraction: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified train/test index split (no sklearn needed, stable across versions).

    Why our own: the held-out half must be byte-for-byte reproducible from the seed in RESULTS.md,
    independent of library versions.
    """
    rng = np.random.default_rng(seed)
    groups: dict[object, list[int]] = {}
    for i, s in enumerate(strata):
        groups.setdefault(s, []).append(i)
    train: list[int] = []
    test: list[int] = []
    for key in sorted(groups, key=str):
        idx = np.array(groups[key])
        rng.shuffle(idx)
        k = int(round(len(idx) * test_fraction))
        test.extend(idx[:k].tolist())
        train.extend(idx[k:].tolist())
    return np.array(sorted(train), dtype=int), np.array(sorted(test), dtype=int)


def holdout_strata(ds: LabeledDataset) -> list[str]:
    """Strata for the held-out split: the subject or task only, so both halves have the same mix of them.

    Never the labels: stratifying on each prompt's label pattern would hand the held-out half's
    per-subject accuracies to the training half (they come out equal by construction) and make every
    held-out figure optimistic.
    """
    return list(ds.subjects if ds.subjects is not None else (ds.tasks or [ds.name] * len(ds)))
