"""Chaos scenarios: the table of every scenario's result at the end of the session."""

from __future__ import annotations

import os
from pathlib import Path

from tests.chaos.report import recorded, table, write_json


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    results = recorded()
    if not results:
        return
    terminalreporter.section("pdserve chaos scenarios")
    terminalreporter.write_line(table(results))
    path = os.environ.get("PDSERVE_CHAOS_REPORT")
    if path:
        write_json(results, Path(path))
