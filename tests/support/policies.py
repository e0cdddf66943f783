"""Two versions of one small policy, for registry and policy-event tests."""

from __future__ import annotations

V1 = "name: p\ndescription: first\nselector: {type: cheapest}\n"
V2 = "name: p\ndescription: second\nselector: {type: least_busy}\n"
