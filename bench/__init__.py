"""Benchmarks of glam (run ``python -m bench``)."""
