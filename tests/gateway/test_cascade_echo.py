"""Cascades on legacy completions that echo their prompt (``echo: true``, often with ``logprobs: N`` to score
it): the first answer is judged on what the model generated, never on the echoed prompt or its tokens'
log-probabilities, whole or streamed, while the client still gets the echoed text; a request that generates
nothing (``max_tokens: 0``, the prompt scored) is answered by the first tier unjudged. Through the real
gateway, with the local engine (which returns the prompt's logprobs, the first null, as OpenAI and vLLM do)
and fake providers."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from backends.fake_provider import FakeProviderConfig, FakeProviderThread
from router.offline.artifacts import save_verifier
from router.offline.verifier_train import read_answers, train_verifier
from tests.support.db import migrated_sqlite_url
from tests.support.engine import build_checkpoint
from tests.support.gateway import dep, settings
from tests.support.harness import GatewayThread, running_gateway
from tests.support.verifier_data import WEAK, arithmetic_problems, write_routellm

# The echoed prompt states a wrong sum: a verifier reading it as part of the answer distrusts a sound answer.
PROMPT = "Check: 2 + 2 = 5. Ann has 10 shells and finds 20 more. How many?"
CHEAP = " 10 + 20 = 30. The answer is 30."
CAPS = ["chat", "completion", "logprobs"]
YAML = {"content-type": "application/yaml"}


@dataclass
class Setup:
    gw: GatewayThread
    cheap: FakeProviderThread
    strong: FakeProviderThread


def put_policy(gw: GatewayThread, name: str, first: str, score: str, threshold: float) -> None:
    spec = (f"name: {name}\nselector: {{type: fixed, order: [{first}]}}\n"
            f"escalation: {{first: [{first}], to: [strong], threshold: {threshold:.6g}, score: {score}}}\n")
    r = httpx.put(f"{gw.base_url}/admin/api/policies/{name}", content=spec, headers=YAML)
    assert r.status_code in (200, 201), r.text


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("cascade-echo")
    verifier = train_verifier(read_answers([write_routellm(tmp / "toy.csv", arithmetic_problems(200))], WEAK), folds=3)
    save_verifier(verifier, tmp / "verifier")
    local = {"name": "jamba-local", "model": "jamba", "provider": "local",
             "upstream_model": str(build_checkpoint(tmp / "jamba")), "context_window": 512, "timeout_s": 60,
             "capabilities": CAPS, "pricing": {"input_per_mtok": 0.0, "output_per_mtok": 0.0}}
    with (
        FakeProviderThread(config=FakeProviderConfig(reply_mode="fixed", reply_text=CHEAP)) as cheap,
        FakeProviderThread(config=FakeProviderConfig(reply_mode="fixed", reply_text="She has 30.")) as strong,
    ):
        deployments = [dep("cheap", "cheap-model", cheap.base_url, capabilities=CAPS),
                       dep("strong", "strong-model", strong.base_url, capabilities=CAPS), local]
        cfg = settings(tmp, migrated_sqlite_url(sqlite_template, tmp / "gw.db"), deployments,
                       router={"verifiers": {"default": str(tmp / "verifier")}})
        with running_gateway(cfg) as gw:
            put_policy(gw, "checked", "cheap", "verifier", 0.5)
            put_policy(gw, "sure", "cheap", "logprobs", 0.5)
            yield Setup(gw, cheap, strong)


def complete(gw: GatewayThread, body: dict[str, Any]) -> tuple[httpx.Headers, dict[str, Any]]:
    """POST a legacy completion; the headers and the first choice (a stream's chunks folded into one:
    text joined, legacy logprobs concatenated, None when no chunk carried any)."""
    if not body.get("stream"):
        r = httpx.post(gw.base_url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.headers, r.json()["choices"][0]
    with httpx.stream("POST", gw.base_url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        events = [orjson.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    parts = [c for e in events for c in e["choices"] if c["index"] == 0]
    lps = [c["logprobs"] for c in parts if c["logprobs"] is not None]
    folded = {k: [v for lp in lps for v in lp[k]] for k in ("token_logprobs", "text_offset")} if lps else None
    return r.headers, {"text": "".join(c["text"] for c in parts), "logprobs": folded}


@pytest.mark.parametrize("stream", [False, True])
def test_the_verifier_judges_the_completion_not_the_echoed_prompt(setup: Setup, stream: bool) -> None:
    strong_before = setup.strong.stats["total"]
    headers, choice = complete(setup.gw, {"model": "checked", "prompt": PROMPT, "echo": True, "max_tokens": 20,
                                          "stream": stream})
    reason = headers["x-hybridgate-route-reason"]
    assert headers["x-hybridgate-model"] == "cheap-model" and "verifier=" in reason and "kept" in reason, reason
    assert choice["text"] == PROMPT + CHEAP  # the client still gets what it asked for
    assert setup.strong.stats["total"] == strong_before


@pytest.mark.parametrize("stream", [False, True])
def test_logprob_confidence_is_the_completions_tokens_only(setup: Setup, stream: bool) -> None:
    """The local engine echoes the prompt's token logprobs before the completion's (whole, and streamed in the
    first chunk with the first generated token). The random tiny model finds the prompt unlikely and its own
    greedy tokens likely: a threshold between the two means keeps the answer only if the prompt is left out."""
    prompt = "The quick brown fox jumps over the lazy dog."
    ask = {"prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 6, "temperature": 0, "stream": stream}
    _, direct = complete(setup.gw, {"model": "jamba", **ask})
    lp = direct["logprobs"]
    assert direct["text"].startswith(prompt) and lp["token_logprobs"][0] is None
    every = [v for v in lp["token_logprobs"] if v is not None]
    generated = [v for v, o in zip(lp["token_logprobs"], lp["text_offset"], strict=True) if o >= len(prompt)]
    assert 0 < len(generated) < len(every)
    mean_every, mean_generated = (math.exp(sum(x) / len(x)) for x in (every, generated))
    assert mean_generated > 2 * mean_every, (mean_generated, mean_every)
    put_policy(setup.gw, "local-echo", "jamba-local", "logprobs", math.sqrt(mean_every * mean_generated))

    strong_before = setup.strong.stats["total"]
    headers, choice = complete(setup.gw, {"model": "local-echo", **ask})
    reason = headers["x-hybridgate-route-reason"]
    assert headers["x-hybridgate-model"] == "jamba" and f"logprobs={mean_generated:.2f} >=" in reason, reason
    assert setup.strong.stats["total"] == strong_before
    assert choice["text"] == direct["text"] and choice["logprobs"] == lp  # the client's echo, untouched


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_that_generates_nothing_is_answered_by_the_first_tier_unjudged(setup: Setup, stream: bool) -> None:
    strong_before = setup.strong.stats["total"]
    for policy in ("checked", "sure"):
        headers, choice = complete(setup.gw, {"model": policy, "prompt": PROMPT, "echo": True, "max_tokens": 0,
                                              "stream": stream})
        reason = headers["x-hybridgate-route-reason"]
        assert headers["x-hybridgate-model"] == "cheap-model" and "nothing generated, not judged" in reason, reason
        assert choice["text"] == PROMPT and choice["logprobs"] is None
        assert setup.cheap.provider is not None
        assert "logprobs" not in setup.cheap.provider.requests[-1].body  # nothing asked for a judgement not made
    assert setup.strong.stats["total"] == strong_before


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_0_asked_by_the_client_reach_it_under_a_cascade(setup: Setup, stream: bool) -> None:
    """``logprobs: 0`` asks for the chosen tokens' logprobs (no alternatives): the client's own request,
    passed on as it is and answered, not replaced by the cascade's ``logprobs: 1`` and then dropped."""
    headers, choice = complete(setup.gw, {"model": "sure", "prompt": "Say hi", "logprobs": 0, "max_tokens": 8,
                                          "stream": stream})
    assert headers["x-hybridgate-model"] == "cheap-model" and "logprobs=" in headers["x-hybridgate-route-reason"]
    assert choice["logprobs"] is not None and len(choice["logprobs"]["token_logprobs"]) > 0
    assert setup.cheap.provider is not None and setup.cheap.provider.requests[-1].body["logprobs"] == 0
