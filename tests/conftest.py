"""Shared test plumbing: the robustness figures.

Tests record what they measured with the ``figures`` fixture
(``figures("fuzz inputs", 123456)``).  At the end of the session the figures
are printed in a "robustness figures" section of the terminal summary (so
they show without ``-s``) and merged into ``tests/figures/robustness.txt``,
one ``name: value`` line each, for the README's reliability section.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

FIGURES_FILE = Path(__file__).parent / "figures" / "robustness.txt"
_figures: dict[str, str] = {}


@pytest.fixture
def figures() -> Callable[[str, object], None]:
    """``figures(name, value)``: report one measured figure."""

    def record(name: str, value: object) -> None:
        _figures[name] = str(value)

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _figures:
        return
    terminalreporter.section("robustness figures")
    for name, value in _figures.items():
        terminalreporter.write_line(f"{name}: {value}")
    merged: dict[str, str] = {}
    if FIGURES_FILE.exists():
        for line in FIGURES_FILE.read_text().splitlines():
            name, sep, value = line.partition(": ")
            if sep:
                merged[name] = value
    merged.update(_figures)
    FIGURES_FILE.parent.mkdir(exist_ok=True)
    FIGURES_FILE.write_text("".join(f"{k}: {v}\n" for k, v in sorted(merged.items())))
