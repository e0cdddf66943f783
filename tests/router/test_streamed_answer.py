"""The first answer of a streamed cascade as the score reads it (`StreamedAnswer`): a legacy completion's
echoed prompt, and its tokens' logprobs, are placed whatever the upstream's chunking and offsets."""

from __future__ import annotations

import math
from typing import Any

from router.escalation import Echo, StreamedAnswer, without_echo


def test_a_streamed_echo_is_placed_by_where_each_chunk_starts() -> None:
    """Streamed, the echoed prompt comes first (alone, or with the first generated token in one chunk, its
    offsets absolute); a chunk whose offsets do not lie in its own text is placed by its tokens."""
    low, high = math.log(0.01), math.log(0.9)

    def chunk(text: str, tokens: list[str], values: list[float | None], offsets: list[int]) -> dict[str, Any]:
        return {"choices": [{"index": 0, "text": text, "logprobs": {"tokens": tokens, "token_logprobs": values,
                                                                       "text_offset": offsets}}]}

    together = [chunk("Hi there! Yes", ["Hi", " there", "!", " Yes"], [None, low, low, high], [0, 2, 8, 9]),
                chunk(".", ["."], [high], [13])]
    alone = [chunk("Hi there!", ["Hi there!"], [low], [0]), chunk(" Yes", [" Yes"], [high], [0]),
             chunk(".", ["."], [high], [0])]  # per-chunk offsets from 0: placed by where the chunk starts
    cases = ((together, Echo(text="Hi there!")), (together, Echo(tokens=3)), (alone, Echo(text="Hi there!")))
    for chunks, echo in cases:
        answer = StreamedAnswer(echo=echo)
        answer.add(chunks[0])
        assert answer.generated_chars() == (4 if chunks is together else 0)
        for c in chunks[1:]:
            answer.add(c)
        assert answer.generated_chars() == 5
        out = without_echo(answer.body(), echo)["choices"][0]
        assert out["text"] == " Yes." and out["logprobs"] == {"token_logprobs": [high, high]}, (chunks, echo)
