"""The cascade's answer verifier: stated arithmetic is re-checked safely, a verifier trained on labeled
answers ranks wrong answers below right ones, and it round-trips as an artifact and through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from router.artifacts import load_artifact, load_verifier
from router.escalation import answer_text, confidence, verifier_name
from router.offline.artifacts import save_artifact, save_verifier
from router.offline.cli import train_verifier_main
from router.offline.verifier_train import cross_validate, read_answers, train_verifier
from router.verifier import ANSWER_FEATURE_NAMES, answer_features, arithmetic_checks, safe_arithmetic
from tests.support.verifier_data import STRONG, WEAK, arithmetic_problems, write_routellm


def test_stated_arithmetic_is_rechecked_and_nothing_else_is_evaluated() -> None:
    assert arithmetic_checks("So 3 x 60 = 180 meters.") == (1, 0)
    assert arithmetic_checks("In 2023, 5 + 5 = 11.") == (1, 1)  # the year is not part of the sum
    assert arithmetic_checks("<<3*60=180>>180, then <<2+2=5>>5") == (2, 1)  # GSM8K calculator notes
    assert arithmetic_checks("Total: $1,200 + 300 = $1,500") == (1, 0)
    assert arithmetic_checks("100/3 = 33.33") == (1, 0)  # rounded results count as right
    assert arithmetic_checks("x = 5, answer = 42") == (0, 0)  # nothing to check
    assert safe_arithmetic("2 ** 100000") is None and safe_arithmetic("9**9**9") is None  # no powers
    assert safe_arithmetic('__import__("os").system("true")') is None
    assert safe_arithmetic("1/0") is None and safe_arithmetic("(1+2") is None


def test_answer_features_describe_the_answer_against_its_prompt() -> None:
    f = dict(zip(ANSWER_FEATURE_NAMES, answer_features("Ann has 3 and 4.", "3 + 4 = 8. The answer is 8."),
                 strict=True))
    assert f["arithmetic_wrong"] == 1.0 and f["final_answer_marker"] == 1.0
    assert f["prompt_number_use"] == pytest.approx(2 / 3) and f["empty"] == 0.0
    assert answer_features("q", "")[ANSWER_FEATURE_NAMES.index("empty")] == 1.0


def test_verifier_trained_on_labeled_answers_ranks_wrong_arithmetic_low(tmp_path: Path) -> None:
    rows = arithmetic_problems(300)
    data = read_answers([write_routellm(tmp_path / "toy.csv", rows)], WEAK, other=STRONG)
    assert len(data.labels) == 300 and not np.isnan(data.other).any()
    cv = cross_validate(data, folds=3, repeats=1)
    assert cv["auc"] > 0.95 and cv["escalation_apgr"] > 0.8
    v = train_verifier(data, folds=3)
    right = v.p_ok("Ann has 10 and 20.", "10 + 20 = 30.\nThe answer is 30.")
    wrong = v.p_ok("Ann has 10 and 20.", "10 + 20 = 35.\nThe answer is 35.")
    assert right > 0.8 > 0.2 > wrong
    save_verifier(v, tmp_path / "ver")
    loaded, manifest = load_verifier(tmp_path / "ver")
    assert loaded.p_ok("Ann has 10 and 20.", "10 + 20 = 35.") == v.p_ok("Ann has 10 and 20.", "10 + 20 = 35.")
    assert manifest["judges_model"] == WEAK and manifest["metrics"]["auc"] > 0.95


def test_verifier_and_classifier_artifacts_are_not_mistaken_for_each_other(tmp_path: Path) -> None:
    rows = arithmetic_problems(80)
    v = train_verifier(read_answers([write_routellm(tmp_path / "toy.csv", rows)], WEAK), folds=3)
    save_verifier(v, tmp_path / "ver")
    with pytest.raises(ValueError, match="not a router classifier"):
        load_artifact(tmp_path / "ver")
    from router.offline.datasets import read_csv
    from router.offline.train import TrainConfig, train_classifier

    clf = train_classifier(read_csv(tmp_path / "toy.csv"), TrainConfig())
    save_artifact(clf, tmp_path / "clf")
    with pytest.raises(ValueError, match="not an answer verifier"):
        load_verifier(tmp_path / "clf")
    (tmp_path / "ver" / "arrays.safetensors").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="hash"):
        load_verifier(tmp_path / "ver")


def test_answers_are_read_from_both_dataset_formats_skipping_unknown_labels(tmp_path: Path) -> None:
    rb = tmp_path / "rb_train.csv"
    with open(rb, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_id", "prompt", "eval_name", WEAK, f"{WEAK}|model_response", f"{WEAK}|total_cost"])
        w.writerow(["1", "p1", "arc", "1", "A", "0.001"])
        w.writerow(["2", "p2", "arc", "", "B", "0.001"])  # unknown label: skipped
        w.writerow(["3", "p3", "arc", "0", "C", "0.001"])
    ll = write_routellm(tmp_path / "ll.csv", arithmetic_problems(4))
    data = read_answers([rb, ll], WEAK)
    assert data.prompts[:2] == ["p1", "p3"] and data.answers[:2] == ["A", "C"] and len(data.labels) == 6
    with pytest.raises(ValueError, match="no labeled answers"):
        read_answers([rb], "other-model")


def test_train_verifier_cli_writes_an_artifact_and_reports_cross_validation(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    data = write_routellm(tmp_path / "toy.csv", arithmetic_problems(120))
    rc = train_verifier_main(["--data", str(data), "--model", WEAK, "--escalate-to", STRONG,
                              "--out", str(tmp_path / "v")])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cv"]["auc"] > 0.9 and "escalation_apgr" in report["cv"]
    cuts = [report["cv"][f"threshold_escalating_{p}pct"] for p in (10, 20, 30, 50)]
    assert cuts == sorted(cuts)  # escalating more answers needs a higher threshold
    assert list(load_verifier(tmp_path / "v")[1]["training_data"]) == ["toy.csv"]
    assert train_verifier_main(["--data", str(data), "--model", "nope", "--out", str(tmp_path / "x")]) == 2


class _Fixed:
    def __init__(self, p: float) -> None:
        self.p = p
        self.seen: list[tuple[str, str]] = []

    def p_ok(self, prompt: str, answer: str) -> float:
        self.seen.append((prompt, answer))
        return self.p


def test_cascade_confidence_from_a_named_verifier() -> None:
    chat = {"choices": [{"message": {"role": "assistant", "content": "2 + 2 = 4"}}]}
    completion = {"choices": [{"text": "four"}]}
    default, strict = _Fixed(0.9), _Fixed(0.1)
    verifiers = {"default": default, "strict": strict}
    assert confidence("verifier", chat, "q", verifiers) == 0.9 and default.seen == [("q", "2 + 2 = 4")]
    assert confidence("verifier:strict", completion, "q2", verifiers) == 0.1 and strict.seen == [("q2", "four")]
    assert confidence("verifier:missing", chat, "q", verifiers) is None
    assert confidence("verifier", {"choices": []}, "q", verifiers) is None
    assert confidence("verifier", chat, "q", None) is None
    assert verifier_name("logprobs") is None and verifier_name("verifier:") is None
    assert answer_text({"choices": [{"message": {"content": None, "tool_calls": []}}]}) is None


def test_answer_text_is_recovered_from_logged_plain_and_streamed_bodies() -> None:
    from router.offline.feedback_db import logged_answer_text

    chat = json.dumps({"choices": [{"message": {"role": "assistant", "content": "2 + 2 = 4"}}]})
    text = json.dumps({"choices": [{"text": "four"}]})
    sse = "".join(f"data: {json.dumps({'choices': [{'delta': {'content': p}}]})}\n\n" for p in ("2 + ", "2 = 4"))
    assert logged_answer_text(chat) == "2 + 2 = 4" and logged_answer_text(text) == "four"
    assert logged_answer_text(sse + "data: [DONE]\n\n") == "2 + 2 = 4"
    assert logged_answer_text("not json") is None and logged_answer_text("data: {broken\n\n") is None
