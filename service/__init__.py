"""The request service: what happens to a request between the HTTP edge and the upstreams.

Limits, the signals snapshot, the routing decision, budget reservation and settlement, upstream
outcomes (breakers, latency, in-flight counts) and feedback to the bandits. `gateway/` speaks HTTP
and calls into this package; nothing here knows about HTTP.
"""
