"""Dataset readers, CLI train/score/eval contract, feedback-DB reader (SQLite made here)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from router.offline import cli
from router.offline.datasets import holdout_strata, read_csv, read_many, stratified_split


def test_read_both_formats(data_dir: Path) -> None:
    mmlu = read_csv(data_dir / "routellm" / "mmlu_dev.csv")
    assert len(mmlu) == 6994 and mmlu.subjects is not None
    assert mmlu.strong_weak == ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert 0.78 < np.nanmean(mmlu.labels[:, mmlu.models.index("gpt-4-1106-preview")]) < 0.82
    gsm = read_csv(data_dir / "routellm" / "gsm8k_dev.csv")
    assert gsm.models == ["mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"]  # no *_response
    rb = read_many(sorted((data_dir / "routerbench").glob("*_train.csv")))
    assert len(rb) == 2225 and len(rb.models) == 11 and rb.costs is not None
    nan_rows = np.isnan(rb.labels).any(axis=1)
    assert nan_rows.sum() > 0 and {rb.tasks[i] for i in np.nonzero(nan_rows)[0]} == {"arc-challenge"}
    assert not rb.prompts[0].startswith("['")
    assert len(rb.source_hashes) == 3


def test_split_is_deterministic_stratified_by_subject_and_blind_to_labels(data_dir: Path) -> None:
    ds = read_csv(data_dir / "routellm" / "mmlu_dev.csv")
    a = stratified_split(holdout_strata(ds), 0.5, seed=0)
    b = stratified_split(holdout_strata(ds), 0.5, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    tr, te = a
    assert len(set(tr) & set(te)) == 0 and len(tr) + len(te) == len(ds)
    subjects = np.array(ds.subjects)
    for s in set(ds.subjects):  # every subject split in half
        assert abs((subjects[tr] == s).sum() - (subjects[te] == s).sum()) <= 1
    flipped = ds.subset(np.arange(len(ds)))
    flipped.labels = 1.0 - flipped.labels  # other labels, same prompts: the same split
    assert all(np.array_equal(x, y) for x, y in zip(a, stratified_split(holdout_strata(flipped), 0.5, seed=0), strict=True))


def _small_csv(data_dir: Path, tmp: Path, n: int) -> Path:
    src = data_dir / "routellm" / "gsm8k_dev.csv"
    out = tmp / "small.csv"
    with open(src, newline="") as fi, open(out, "w", newline="") as fo:
        r, w = csv.reader(fi), csv.writer(fo)
        for i, row in enumerate(r):
            if i > n:
                break
            w.writerow(row)
    return out


def test_cli_train_score_eval(data_dir: Path, tmp_path: Path) -> None:
    data = _small_csv(data_dir, tmp_path, 300)
    art = tmp_path / "art"
    assert cli.main(["train", "--data", str(data), "--out", str(art)]) == 0
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["training_data"]["small.csv"] and manifest["models"]
    prompts = tmp_path / "in.jsonl"
    prompts.write_text(
        "\n".join(
            json.dumps({"id": f"q{i}", "prompt": p})
            for i, p in enumerate(["What is 2+2?", "Tom has 3 apples."])
        )
    )
    out = tmp_path / "out.jsonl"
    assert cli.score_main(["--artifact", str(art), "--prompts", str(prompts), "--out", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["q0", "q1"]
    assert set(lines[0]["scores"]) == {"mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"}
    assert all(0 <= v <= 1 for v in lines[0]["scores"].values())
    rep = tmp_path / "rep.json"
    assert cli.eval_main(["--artifact", str(art), "--data", str(data), "--out", str(rep)]) == 0
    r = json.loads(rep.read_text())["labeled"]["small.csv"]
    assert {"apgr", "cpt50", "cpt80"} <= set(r)
    # off-policy evaluation from logged rows
    logs = tmp_path / "logs.jsonl"
    rng = np.random.default_rng(0)
    models = manifest["models"]
    logs.write_text(
        "\n".join(
            json.dumps(
                {
                    "prompt": f"question {i}",
                    "action": models[i % 2],
                    "propensity": 0.5,
                    "reward": float(rng.random()),
                }
            )
            for i in range(50)
        )
    )
    assert cli.eval_main(["--artifact", str(art), "--logs", str(logs), "--out", str(rep)]) == 0
    ope = json.loads(rep.read_text())["off_policy"]
    assert ope["n"] == 50 and ope["ips"]["lo"] <= ope["ips"]["value"] <= ope["ips"]["hi"]


def test_train_from_feedback_db(tmp_path: Path) -> None:
    sa = pytest.importorskip("sqlalchemy")
    db = tmp_path / "fb.db"
    eng = sa.create_engine(f"sqlite:///{db}")
    md = sa.MetaData()
    req = sa.Table(
        "requests",
        md,
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("prompt_text", sa.Text, nullable=True),
        sa.Column("served_model", sa.String),
    )
    fb = sa.Table(
        "feedback",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("request_id", sa.String, sa.ForeignKey("requests.id")),
        sa.Column("score", sa.Float),
    )
    md.create_all(eng)
    rng = np.random.default_rng(0)
    with eng.begin() as c:
        for i in range(120):
            math_q = i % 2 == 0
            model = "big" if i % 3 else "small"
            prompt = f"Solve {i} * 17 step by step" if math_q else f"Say hello to person {i}"
            p_ok = 0.9 if (model == "big" or not math_q) else 0.2
            c.execute(
                req.insert().values(id=f"r{i}", prompt_text=None if i == 5 else prompt, served_model=model)
            )
            c.execute(fb.insert().values(request_id=f"r{i}", score=float(rng.random() < p_ok)))
        c.execute(fb.insert().values(request_id="r1", score=0.5))  # second feedback: averaged
    eng.dispose()
    from router.offline.feedback_db import read_feedback

    ds = read_feedback(f"sqlite:///{db}")
    assert len(ds) == 119 and sorted(ds.models) == ["big", "small"]
    assert np.all(np.isnan(ds.labels).sum(axis=1) == 1)  # one known label per request
    art = tmp_path / "art"
    assert cli.train_main(["--from-db", f"sqlite+aiosqlite:///{db}", "--out", str(art)]) == 0
    from router.artifacts import load_artifact

    clf, _ = load_artifact(art)
    p_math = clf.predict("Solve 500 * 17 step by step")
    p_hello = clf.predict("Say hello to person 500")
    assert p_math["small"] < p_hello["small"]
