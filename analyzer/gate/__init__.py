"""The gate room: ``glam baseline`` / ``glam check``, the CI gate that re-runs archived
analyses on a deployed model and judges them against tolerances (reports as table, JSON,
JUnit). Imports the engine, the archive, ``glam.api`` and ``glam.runs``; nothing imports it but the CLI."""
