"""The route reason travels in a response header (`x-hybridgate-route-reason`): whatever text it holds (a
policy's or a deployment's name, an artifact's words) it stays one header line of printable ASCII."""

from __future__ import annotations

from gateway.openai_api import _header_safe


def test_a_route_reason_never_breaks_out_of_its_header_line() -> None:
    reason = "rule 1\r\nSet-Cookie: hg_console=planted\r\n\r\n<html>\x00\x1b[31m\x7f\tend → fast ≤ 2"
    safe = _header_safe(reason)
    assert safe == "rule 1Set-Cookie: hg_console=planted<html>[31mend -> fast <= 2"
    assert all(" " <= c <= "~" for c in safe)
    assert _header_safe("policy auto@3: classifier → fast-lane (p=0.81 ≥ 0.7), naïve") == \
        "policy auto@3: classifier -> fast-lane (p=0.81 >= 0.7), na?ve"
    assert len(_header_safe("x" * 2000)) == 512
