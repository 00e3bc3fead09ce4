"""Outbound HTTP (placeholder until wasi:http is wired)."""
