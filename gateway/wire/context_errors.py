"""The numbers in an upstream's context-length error, so each wire format can restate it in its own words.

OpenAI and vLLM word the error for chat completions ("… in the messages, … in the completion"); a caller
of the Responses or Messages API sent ``input`` / ``max_output_tokens`` or ``messages`` / ``max_tokens``,
so its error is reworded from the numbers found here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Context-length messages of OpenAI and vLLM: the window (w), the tokens asked for in all (r), or the
# prompt (p) and the output limit (c).
_PATTERNS = (
    # OpenAI, older vLLM, our local engine: "… maximum context length is W tokens. However, you requested R
    # tokens (P in the messages, C in the completion)." (the engine: "in the prompt")
    re.compile(r"maximum context length is (?P<w>\d+) tokens\. However, you requested (?P<r>\d+) tokens"
               r"(?: \((?P<p>\d+) in the (?:messages|prompt), (?P<c>\d+) in the completion\))?"),
    # vLLM: "'max_tokens' or 'max_completion_tokens' is too large: C. This model's maximum context length is
    # W tokens and your request has P input tokens"
    re.compile(r"is too large: (?P<c>\d+)\. This model's maximum context length is (?P<w>\d+) tokens "
               r"and your request has (?P<p>\d+) input tokens"),
    # vLLM: "… maximum context length is W tokens. However, your request has R input tokens."; our local
    # engine: "… However, your prompt has R tokens."
    re.compile(r"maximum context length is (?P<w>\d+) tokens\. However, your (?:request|prompt) has (?P<r>\d+)"
               r" (?:input )?tokens"),
)


@dataclass(frozen=True)
class ContextOverflow:
    """What a context-length error says: the window, and the prompt and output limit where it gives them
    (``requested``: the tokens asked for in all, or the prompt's when that is all it gives)."""

    window: int
    requested: int | None
    prompt: int | None
    completion: int | None

    @property
    def output_tips_it(self) -> bool:
        """The prompt fits the window and the output limit is what overflows it."""
        p, c = self.prompt, self.completion
        return p is not None and bool(c) and p <= self.window < p + (c or 0)


def parse_context_overflow(message: str) -> ContextOverflow | None:
    """The numbers of an OpenAI or vLLM context-length message; None when it is worded otherwise."""
    for pattern in _PATTERNS:
        m = pattern.search(message)
        if m is None:
            continue
        found = {k: int(v) for k, v in m.groupdict().items() if v is not None}
        prompt = found.get("p")
        return ContextOverflow(found["w"], found.get("r", prompt), prompt, found.get("c"))
    return None
