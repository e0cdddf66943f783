"""Trained answer verifier: p(the answer is acceptable | prompt, answer), a cascade's confidence when the
provider returns no token log-probabilities.

A cascade serves a cheap model and escalates when its answer looks wrong. Log-probabilities are one
signal, but many providers (Anthropic, most OpenAI-compatible servers by default) do not return them.
The answer itself carries evidence the prompt alone does not: arithmetic it states that does not hold,
no final answer, numbers that appear from nowhere, hedging. On the RouteLLM GSM8K data a logistic
regression over these features ranks Mixtral's answers with AUC ≈ 0.75, and escalating its least
trusted answers to GPT-4 reaches APGR ≈ 0.78 on the escalation curve, against 0.64 for the best
prompt-only router (bench/verifier_eval.py, bench/RESULTS.md).

Pure: numpy and the standard library at decision time; training lives in router/offline/verifier_train.py.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass, field

import numpy as np

from router.features import DENSE_FEATURE_NAMES, dense_features, normalize_prompt

__all__ = [
    "ANSWER_FEATURE_NAMES",
    "AnswerVerifier",
    "answer_features",
    "arithmetic_checks",
    "safe_arithmetic",
]

ANSWER_FEATURE_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_numbers",
    "new_number_share",  # answer numbers that are not in the prompt
    "prompt_number_use",  # prompt numbers the answer uses
    "final_answer_marker",
    "log_arithmetic",  # stated calculations that could be checked
    "arithmetic_wrong",  # at least one of them does not hold
    "arithmetic_wrong_share",
    "hedging",
    "log_lines",
    "empty",
)

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
# "<<48/2=24>>" (GSM8K calculator notes) and inline "3 x 60 = 180": an expression of numbers and
# operators, "=", then a number. The expression is re-evaluated and compared with the stated result.
_CALC_NOTE = re.compile(r"<<([^<>=]{1,80})=([^<>]{1,40})>>")
_RESULT = re.compile(r"=\s*\$?(-?\d[\d,]*(?:\.\d+)?)")
# what ends an expression to the left of "=": a letter (but x, used for times), ":", ";", "=", a
# newline, or a comma that separates words rather than thousands
_EXPR_START = re.compile(r"[a-wyzA-WYZ:;=\n]|,\s")
_FINAL = ("####", "the answer is", "answer:", "\\boxed", "final answer")
_HEDGES = (
    "not sure",
    "i cannot",
    "can't be determined",
    "cannot be determined",
    "unclear",
    "i think",
    "assum",
)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _eval_node(node: ast.AST) -> float:
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval_node(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval_node(node.left), _eval_node(node.right))
    raise ValueError("not plain arithmetic")


def safe_arithmetic(expr: str) -> float | None:
    """Value of a plain arithmetic expression (numbers, + - * / and parentheses; ``x``/``×``/``÷``
    accepted), or None for anything else. Never ``eval``: the text comes from a model's answer."""
    e = expr.replace(",", "").replace("$", "").replace("€", "").replace("£", "")
    e = e.replace("×", "*").replace("x", "*").replace("÷", "/").strip()
    if (
        not e
        or len(e) > 80
        or not re.fullmatch(r"[\d.\s+\-*/()]+", e)
        or not re.search(r"\d\s*[-+*/]\s*[\d(]", e)
    ):
        return None
    try:
        value = _eval_node(ast.parse(e, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def arithmetic_checks(answer: str) -> tuple[int, int]:
    """(calculations stated in ``answer`` that could be checked, how many of them are wrong).

    A stated result with ``d`` decimals counts as right within one unit of its last place, since
    answers round or truncate (33.33 or 33.34 for 100/3, 3 for 10/3); a whole-number result of a
    whole-number calculation must be exact (408 + 278 = 688 is wrong).
    """
    checked = wrong = 0
    pairs = [(m.group(1), m.group(2)) for m in _CALC_NOTE.finditer(answer)]
    text = _CALC_NOTE.sub(" ", answer)
    for m in _RESULT.finditer(text):
        left = text[max(0, m.start() - 80) : m.start()]
        pairs.append((_EXPR_START.split(left)[-1], m.group(1)))
    for expr, stated in pairs:
        value, claim = safe_arithmetic(expr), _number(stated)
        if value is None or claim is None:
            continue
        checked += 1
        decimals = len(stated.partition(".")[2].strip())
        exact = decimals == 0 and abs(value - round(value)) < 1e-9
        tol = 1e-9 * max(1.0, abs(value)) if exact else 10.0**-decimals
        if abs(value - claim) > tol:
            wrong += 1
    return checked, wrong


def answer_features(prompt: str, answer: str) -> list[float]:
    """Structure of an answer relative to its prompt, in ANSWER_FEATURE_NAMES order."""
    low = answer.lower()
    nums_p = set(_NUMBER.findall(prompt))
    nums_a = _NUMBER.findall(answer)
    distinct_a = set(nums_a)
    checked, wrong = arithmetic_checks(answer)
    return [
        math.log1p(len(answer)),
        math.log1p(len(nums_a)),
        len(distinct_a - nums_p) / (1 + len(distinct_a)),
        len(nums_p & distinct_a) / (1 + len(nums_p)),
        float(any(m in low for m in _FINAL)),
        math.log1p(checked),
        float(wrong > 0),
        wrong / (1 + checked),
        float(any(h in low for h in _HEDGES)),
        math.log1p(answer.count("\n")),
        float(not answer.strip()),
    ]


@dataclass
class AnswerVerifier:
    """Frozen logistic regression over [answer features, the prompt's structure features], standardised.

    ``model`` names the model whose answers it was trained on: a verifier learns that model's failure
    modes, so a policy should use it to judge that model (or one like it).
    """

    model: str
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    feature_names: tuple[str, ...] = ANSWER_FEATURE_NAMES + DENSE_FEATURE_NAMES
    metadata: dict[str, object] = field(default_factory=dict)

    @staticmethod
    def raw_features(prompt: str, answer: str) -> np.ndarray:
        p = normalize_prompt(prompt)
        return np.array(answer_features(p, answer) + dense_features(p), dtype=np.float64)

    def probability(self, raw: np.ndarray) -> np.ndarray:
        """p(acceptable) for raw feature rows (:meth:`raw_features`; one row or a 2-D batch)."""
        z = ((raw - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))

    def p_ok(self, prompt: str, answer: str) -> float:
        """Probability that ``answer`` to ``prompt`` is acceptable."""
        return float(self.probability(self.raw_features(prompt, answer)))
