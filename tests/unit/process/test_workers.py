"""How many workers a [milter] workers value starts."""

from __future__ import annotations

import pytest

from spfmilter.config.loading import parse_config
from spfmilter.process.workers import worker_count


@pytest.mark.parametrize(
    ("text", "cpus", "count"),
    [("auto", 2, 2), ("AUTO", None, 1), ("auto", 32, 8), ("1", 32, 1), ("64", 2, 64)],
)
def test_worker_count(text: str, cpus: int | None, count: int) -> None:
    config = parse_config(f"[milter]\nworkers = {text}\n")
    assert worker_count(config.milter.workers, cpus) == count
