"""Shared state (breakers, rate limits, budgets, bandit posteriors): in-process and Redis."""
