"""Calibrating a classifier policy's cost weight to a target share of traffic for one model: the
policy's own decision is replayed on representative prompts, no provider is called."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

import pytest

from common.types import RequestFeatures
from policies.loader import parse_policy
from router import Plugins, Signals
from router.calibrate import calibrate_cost_weight
from router.compiled import compiled_for
from tests.support.deployments import NOON, make_deployments

DEPS = make_deployments()
POLICY = parse_policy(textwrap.dedent("""\
    name: smart
    filters: {allow: [gpt-4o-mini, gpt-4o-openai]}
    selector: {type: classifier, threshold: 0.0, lambda: 0.5}
"""), default_name="smart")


class GapScorer:
    """The strong model is always likely right; the cheap one's chance is read off the prompt."""

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, prompt_text: str, metadata: Mapping[str, Any]) -> Mapping[str, float]:
        self.calls += 1
        return {"gpt-4o": 0.95, "gpt-4o-mini": float(prompt_text.split()[-1])}


def _requests(n: int) -> list[RequestFeatures]:
    return [RequestFeatures(prompt_tokens=200, max_tokens=100, prompt_text=f"question {i / n:.4f}") for i in range(n)]


def _calibrate(share: float, scorer: GapScorer | None = None, n: int = 200):  # noqa: ANN202
    plugins = Plugins(scorers={"default": scorer or GapScorer()})
    return calibrate_cost_weight(POLICY, _requests(n), DEPS, Signals(), plugins, "gpt-4o", share, NOON)


@pytest.mark.parametrize("share", [0.1, 0.3, 0.5, 0.8])
def test_the_calibrated_weight_sends_the_target_share_to_the_model(share: float) -> None:
    cal = _calibrate(share)
    assert cal.n == 200 and cal.share_at_zero == pytest.approx(0.95, abs=0.01)  # mini right less often
    assert share - 0.01 <= cal.share <= share  # the smallest weight not above the target, to one prompt
    assert (cal.cost_weight > 0) == (share < cal.share_at_zero)


def test_more_share_than_quality_alone_gives_is_reported_not_invented() -> None:
    cal = _calibrate(0.99)
    assert cal.cost_weight == 0.0 and cal.share == cal.share_at_zero < 0.99


def test_the_scorer_is_asked_once_per_prompt_and_the_live_policy_keeps_its_compilation() -> None:
    live = compiled_for(POLICY, DEPS)
    scorer = GapScorer()
    _calibrate(0.3, scorer, n=50)
    assert scorer.calls == 50  # ~40 bisection steps re-decide every prompt from the memo
    assert compiled_for(POLICY, DEPS) is live


def test_only_classifier_policies_and_some_prompts_can_be_calibrated() -> None:
    fixed = parse_policy("name: f\nselector: {type: fixed}\n", default_name="f")
    with pytest.raises(ValueError, match="classifier"):
        calibrate_cost_weight(fixed, _requests(5), DEPS, Signals(), Plugins(), "gpt-4o", 0.5, NOON)
    with pytest.raises(ValueError, match="no prompts"):
        calibrate_cost_weight(POLICY, [], DEPS, Signals(), Plugins(), "gpt-4o", 0.5, NOON)
