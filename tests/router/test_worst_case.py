"""The most a request may cost as sent, reserved before any call (router.budget.worst_case_usd)."""

from __future__ import annotations

import pytest

from common.types import DeploymentConfig, RequestFeatures
from router.budget import worst_case_usd


def dep(name: str, out_per_mtok: float, **kw: object) -> DeploymentConfig:
    return DeploymentConfig(
        name=name,
        model="m",
        provider="openai_compatible",
        upstream_model="x",  # type: ignore[arg-type]
        pricing={"input_per_mtok": 1.0, "output_per_mtok": out_per_mtok},
        **kw,
    )


def test_every_choice_is_counted_at_max_tokens() -> None:
    f = RequestFeatures(prompt_tokens=1000, max_tokens=20, choices=128)
    assert worst_case_usd(f, [dep("a", 1e6)]) == pytest.approx(0.001 + 128 * 20)


def test_without_max_tokens_the_models_output_limit_counts() -> None:
    f = RequestFeatures(prompt_tokens=100)
    assert worst_case_usd(f, [dep("a", 1e6, max_output_tokens=500)]) == pytest.approx(1e-4 + 500)
    assert worst_case_usd(f, [dep("b", 1e6, context_window=1000)]) == pytest.approx(1e-4 + 900)


def test_max_tokens_zero_reserves_the_prompt_only() -> None:
    f = RequestFeatures(prompt_tokens=1000, max_tokens=0, choices=2)
    assert worst_case_usd(f, [dep("a", 1e6, max_output_tokens=500)]) == pytest.approx(0.001)


def test_the_priciest_candidate_and_a_cascades_second_answer_count() -> None:
    f = RequestFeatures(prompt_tokens=0, max_tokens=10)
    cheap, dear = dep("cheap", 1e6), dep("dear", 3e6)
    assert worst_case_usd(f, [cheap, dear]) == pytest.approx(30)
    assert worst_case_usd(f, [cheap], [dear]) == pytest.approx(10 + 30)


def test_embeddings_produce_no_output() -> None:
    f = RequestFeatures(prompt_tokens=1_000_000, endpoint="embedding")
    assert worst_case_usd(f, [dep("e", 1e6)]) == pytest.approx(1.0)
