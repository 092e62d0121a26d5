"""Micro and A/B benchmarks B0–B6 (BENCHMARKS.md); run them with `python -m bench`."""
