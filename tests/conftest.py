"""Shared test plumbing: the robustness figures, and nothing written into the tree.

Tests record what they measured with the ``figures`` fixture
(``figures("fuzz inputs", 123456)``).  At the end of the session the figures
are printed in a "robustness figures" section of the terminal summary (so
they show without ``-s``) and merged into ``robustness.txt`` in pytest's cache
directory (``.pytest_cache/d/qmpevents/``, which git ignores), one
``name: value`` line each, for the README's reliability section.

Hypothesis keeps its example database there too instead of ``./.hypothesis``;
with the cache disabled (``-p no:cacheprovider``) it uses a temporary
directory, and the figures are only printed.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from background import BackgroundRun
from cli_process import short_dir
from hypothesis.configuration import set_hypothesis_home_dir

_figures: dict[str, str] = {}
_temporary: list[str] = []
_background: dict[str, BackgroundRun] = {}


def _cache_dir(config: pytest.Config) -> Path | None:
    """This project's directory in pytest's cache, or None without the cache plugin."""
    cache = getattr(config, "cache", None)
    return None if cache is None else Path(cache.mkdir("qmpevents"))


def pytest_configure(config: pytest.Config) -> None:
    cache = _cache_dir(config)
    if cache is None:
        _temporary.append(tempfile.mkdtemp(prefix="qmpev-hypothesis-"))
        set_hypothesis_home_dir(_temporary[-1])
    else:
        set_hypothesis_home_dir(str(cache / "hypothesis"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the selected tests' background runs (see :mod:`background`)."""
    for item in session.items:
        marker = item.get_closest_marker("background")
        skipped = any(m.args and m.args[0] for m in item.iter_markers("skipif"))
        if marker is not None and not skipped:
            _background[item.nodeid] = BackgroundRun(marker.args[0])


@pytest.fixture
async def background(request: pytest.FixtureRequest) -> Any:
    """What the test's ``@pytest.mark.background.with_args(make)`` run returned."""
    return await asyncio.wrap_future(_background[request.node.nodeid].result)


def pytest_unconfigure(config: pytest.Config) -> None:
    for run in _background.values():
        run.cancel()
    for path in _temporary:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def figures() -> Callable[[str, object], None]:
    """``figures(name, value)``: report one measured figure."""

    def record(name: str, value: object) -> None:
        _figures[name] = str(value)

    return record


@pytest.fixture
def short_tmp() -> Iterator[str]:
    """A fresh directory whose socket paths fit in ``sun_path`` (removed after)."""
    with short_dir("test") as path:
        yield path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    if not _figures:
        return
    terminalreporter.section("robustness figures")
    for name, value in _figures.items():
        terminalreporter.write_line(f"{name}: {value}")
    cache = _cache_dir(config)
    if cache is None:
        return
    figures_file = cache / "robustness.txt"
    merged: dict[str, str] = {}
    if figures_file.exists():
        for line in figures_file.read_text().splitlines():
            name, sep, value = line.partition(": ")
            if sep:
                merged[name] = value
    merged.update(_figures)
    figures_file.write_text("".join(f"{k}: {v}\n" for k, v in sorted(merged.items())))
    terminalreporter.write_line(f"(merged into {figures_file})")
