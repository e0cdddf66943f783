"""Helpers shared by the tests: servers, ports, databases, model fixtures' builders (no fixtures here)."""
