"""Observability: system readings, loss-range watch, parameter outputs, run analysis, doctor."""
