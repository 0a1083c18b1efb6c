"""The hostile-input suite: ``slow`` tests (the 30-kill campaign) run only when asked for
with ``-m slow`` (or ``GLAM_SLOW_TESTS=1``); the short variants always run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("-m") or "") or os.environ.get("GLAM_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow; run with -m slow or GLAM_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords and HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)
