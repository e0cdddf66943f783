"""A smoke training run: loss goes down, the exported checkpoint reads back with identical logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import local_model
from local_model.config import JambaConfig
from local_model.model import JambaForCausalLM
from local_model.train import CHAT_TEMPLATE, SPECIAL_TOKENS, main


@pytest.fixture(scope="module")
def smoke_run(toy_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("smoke")
    out, work = root / "ckpt", root / "work"
    rc = main(["--smoke", "--corpus", str(toy_corpus), "--out", str(out), "--work-dir", str(work),
               "--steps", "40", "--threads", "1"])  # fmt: skip
    assert rc == 0
    return out, work


def test_loss_goes_down(smoke_run: tuple[Path, Path]) -> None:
    _, work = smoke_run
    summary = json.loads((work / "summary.json").read_text())
    assert summary["step"] == 40
    assert summary["final_eval_loss"] < summary["first_eval_loss"] - 0.5
    assert summary["train_loss_ema"] < summary["first_train_loss"]
    log = [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "saved" for r in log)


def test_checkpoint_reads_back_with_identical_logits(smoke_run: tuple[Path, Path]) -> None:
    out, work = smoke_run
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                               "tokenizer_config.json", "generation_config.json"}  # fmt: skip
    lm = local_model.load(out)
    # The in-memory weights at the end of training, from the resumable state.
    state = torch.load(work / "state.pt", weights_only=False)
    trained = JambaForCausalLM(JambaConfig.from_json(out))
    trained.load_state_dict(state["model"])
    trained.eval()
    ids = torch.tensor([lm.tokenizer.encode("Alice was beginning to get very tired")])
    with torch.no_grad():
        torch.testing.assert_close(lm.logits(ids), trained(ids), rtol=0, atol=0)


def test_tokenizer_and_config_of_the_export(smoke_run: tuple[Path, Path]) -> None:
    out, _ = smoke_run
    lm = local_model.load(out)
    tok = lm.tokenizer
    assert tok is not None
    assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.chat_template == CHAT_TEMPLATE
    assert lm.config.eos_token_ids == [2, tok.token_to_id("<|end|>")]
    assert lm.config.tie_word_embeddings and lm.config.num_experts == 4
    assert lm.config.layer_types.count("attention") == 1


def test_resume_continues_from_saved_state(smoke_run: tuple[Path, Path], toy_corpus: Path) -> None:
    out, work = smoke_run
    rc = main(["--smoke", "--corpus", str(toy_corpus), "--out", str(out), "--work-dir", str(work),
               "--steps", "45", "--threads", "1", "--resume"])  # fmt: skip
    assert rc == 0
    summary = json.loads((work / "summary.json").read_text())
    assert summary["step"] == 45
    log = [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines()]
    assert {"event": "resumed", "step": 40}.items() <= next(
        r for r in log if r.get("event") == "resumed"
    ).items()
