"""Policy schema and loader: errors must name the field and the YAML line."""

from __future__ import annotations

import textwrap
import time

import pytest

from policies.loader import PolicyValidationError, examples_dir, load_policy_dir, parse_policy
from policies.schema import ClassifierSelector


def errors_of(text: str, **kw) -> list[tuple[str, int | None, str]]:
    with pytest.raises(PolicyValidationError) as ei:
        parse_policy(textwrap.dedent(text), **kw)
    return [(e.path, e.line, e.message) for e in ei.value.errors]


def test_examples_load_and_are_valid() -> None:
    pols = load_policy_dir(examples_dir())
    assert {"auto", "cheap-first", "local-first", "bandit"} <= set(pols)
    assert isinstance(pols["auto"].selector, ClassifierSelector)
    assert pols["auto"].selector.cost_weight == 0.5  # YAML key `lambda`


def test_unknown_field_names_path_and_line() -> None:
    errs = errors_of(
        """\
        name: p
        rules:
          - name: a
            when:
              prompt_tokens: {gt: 10}
            then: {pick: [x]}
          - name: b
            when:
              prompt_tokenz: {gt: 5}
            then: {pick: [y]}
        """
    )
    assert errs == [("rules[1].when.prompt_tokenz", 9, "Extra inputs are not permitted")]


def test_selector_option_error_skips_union_tag() -> None:
    errs = errors_of(
        """\
        name: p
        selector:
          type: cheapest
          expected_output_tokens: -3
        """
    )
    assert len(errs) == 1
    path, line, msg = errs[0]
    assert path == "selector.expected_output_tokens" and line == 4 and "greater than or equal to 0" in msg


def test_missing_field_points_at_parent_and_names_field() -> None:
    errs = errors_of(
        """\
        name: p
        rules:
          - name: r
            when: {}
        """
    )
    assert errs == [("rules[0].then", 3, "Field required")]


def test_flow_sequence_item_line_and_trigger_aliases() -> None:
    errs = errors_of(
        """\
        name: p
        fallbacks:
          chain: [a]
          triggers: [5xx, 429, bogus]
        """
    )
    assert [(p, ln) for p, ln, _ in errs] == [("fallbacks.triggers[2]", 4)]
    ok = parse_policy("name: p\nfallbacks: {triggers: [5xx, 429, timeout]}\n")
    assert ok.fallbacks.triggers == ["server_error", "rate_limit", "timeout"]


def test_several_errors_reported_together() -> None:
    errs = errors_of(
        """\
        name: p
        selector: {type: weighted, weights: {a: -1}}
        retry:
          max_attempts: 0
          jitter: sometimes
        """
    )
    paths = {(p, ln) for p, ln, _ in errs}
    assert ("selector.weights", 2) in paths
    assert ("retry.max_attempts", 4) in paths
    assert ("retry.jitter", 5) in paths


def test_model_validator_errors_are_located_and_clean() -> None:
    errs = errors_of(
        """\
        name: p
        rules:
          - name: r
            then: {}
        budget:
          on_exceeded: downgrade
        """
    )
    assert ("rules[0].then", 4, "a rule action needs at least one of pick, restrict, forbid, avoid, tier, selector") in errs
    assert ("budget", 5, "on_exceeded: downgrade needs downgrade_tier") in errs


def test_reference_errors_have_lines() -> None:
    errs = errors_of(
        """\
        name: p
        tiers:
          cheap: [a]
        rules:
          - name: r
            then:
              tier: premium
          - name: r
            then: {pick: b}
        budget: {on_exceeded: downgrade, downgrade_tier: gold}
        """
    )
    assert ("rules[0].then.tier", 7, "unknown tier 'premium' (tiers: cheap)") in errs
    assert any(p == "rules[1].name" and ln == 8 and "duplicate" in m for p, ln, m in errs)
    assert any(p == "budget.downgrade_tier" and ln == 10 for p, ln, _ in errs)


def test_yaml_syntax_error_has_line() -> None:
    errs = errors_of("name: p\nrules:\n  - name: [unclosed\n")
    assert len(errs) == 1 and errs[0][1] is not None and errs[0][2].startswith("YAML syntax")


def test_duplicate_keys_are_errors() -> None:
    errs = errors_of("name: p\nselector: {type: cheapest}\nrules:\n  - name: a\n    then: {pick: x, pick: y}\nselector: {type: fixed}\n")
    assert errs == [
        ("rules[0].then.pick", 5, "duplicate key 'pick' (first on line 5)"),
        ("selector", 6, "duplicate key 'selector' (first on line 2)"),
    ]


def test_not_a_mapping() -> None:
    assert errors_of("- a\n- b\n")[0][2] == "a policy must be a YAML mapping"


def test_name_defaults_and_must_match() -> None:
    assert parse_policy("description: x\n", default_name="auto").name == "auto"
    errs = errors_of("name: other\n", require_name="auto")
    assert errs == [("name", 1, "name 'other' does not match the policy name 'auto'")]


def test_bad_time_and_timezone() -> None:
    errs = errors_of(
        """\
        name: p
        rules:
          - name: r
            when:
              time: {from: "25:00", to: "06:00"}
              timezone: Mars/Olympus
            then: {pick: a}
        """
    )
    paths = {p: ln for p, ln, _ in errs}
    assert paths["rules[0].when.time.from"] == 5
    assert paths["rules[0].when.timezone"] == 6


def test_error_str_and_dicts() -> None:
    with pytest.raises(PolicyValidationError) as ei:
        parse_policy("name: p\nbogus: 1\n", source="p.yaml")
    assert "p.yaml" in str(ei.value) and "line 2: bogus" in str(ei.value)
    assert ei.value.as_dicts() == [{"path": "bogus", "line": 2, "column": 1, "message": "Extra inputs are not permitted"}]


def test_single_string_targets_become_lists() -> None:
    p = parse_policy("name: p\nrules:\n  - name: r\n    then: {pick: a, forbid: b}\n")
    assert p.rules[0].then.pick == ["a"] and p.rules[0].then.forbid == ["b"]


def test_escalation_score_is_logprobs_or_a_named_verifier() -> None:
    base = "name: p\nescalation: {to: [gpt-4o], threshold: 0.5, score: SCORE}\n"
    for ok in ("logprobs", "verifier", "verifier:math-v2"):
        assert parse_policy(base.replace("SCORE", ok)).escalation.score == ok  # type: ignore[union-attr]
    errs = errors_of(base.replace("SCORE", "magic"))
    assert len(errs) == 1 and errs[0][0] == "escalation.score" and errs[0][1] == 2


def test_numbers_must_be_finite() -> None:
    # a NaN bound never matches and a NaN or infinite weight never wins: each would switch a rule or a
    # split off without a word
    errs = errors_of(
        """\
        name: p
        rules:
          - name: r
            when: {prompt_tokens: {gt: .nan}}
            then: {forbid: a}
        selector: {type: weighted, weights: {a: .inf, b: 1}}
        """
    )
    assert [(p, ln) for p, ln, _ in errs] == [("rules[0].when.prompt_tokens.gt", 4), ("selector.weights.a", 6)]
    assert all("finite" in m for _, _, m in errs)
    errs = errors_of("name: p\nselector: {type: classifier, lambda: .inf}\n")
    assert errs[0][:2] == ("selector.lambda", 2)


def test_policy_name_is_bounded() -> None:
    errs = errors_of(f"name: {'p' * 129}\n")
    assert errs == [("name", 1, "String should have at most 128 characters")]
    assert parse_policy(f"name: {'p' * 128}\n").name == "p" * 128


def test_yaml_aliases_cannot_expand_a_small_text_into_millions_of_values() -> None:
    lines = ["name: p", "rules:", "  - name: r", "    then: {forbid: a}", "    when:", "      metadata:"]
    lines.append("        x0: &x0 [" + ", ".join(["a"] * 10) + "]")
    lines += [f"        x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 10) + "]" for i in range(1, 6)]  # 10^6 values
    start = time.perf_counter()
    errs = errors_of("\n".join(lines) + "\n")
    assert errs == [("", None, "the policy expands to more than 100000 values (YAML aliases)")]
    assert time.perf_counter() - start < 0.5
    # aliases that stay small are fine
    assert parse_policy("name: p\nfilters: {allow: &t [a, b], deny: []}\ntiers: {x: *t}\n").tiers == {"x": ["a", "b"]}


def test_deep_nesting_is_a_validation_error() -> None:
    errs = errors_of("name: p\ndescription: " + "[" * 3000 + "]" * 3000 + "\n")
    # libyaml refuses it while parsing, with its line; the pure-Python loader recurses until Python stops it
    assert errs in ([("", 2, "YAML syntax: exceeded maximum nesting depth")],
                    [("", None, "collections are nested too deeply")])


def test_a_nul_character_is_refused_at_its_line() -> None:
    # YAML stops reading at a NUL and keeps what came before it, which a database cannot store
    errs = errors_of("name: p\ndescription: x\n\x00selector: {type: bogus}\n")
    assert errs == [("", 3, "a NUL character (U+0000) is not allowed")]
