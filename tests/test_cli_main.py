"""The ``qmpevents`` entry point: --help with examples everywhere, --version, -v."""

from __future__ import annotations

import pytest
from cli_process import one_line_error, run

from qmpevents import __version__
from qmpevents.sim import SimulatedVM

pytestmark = pytest.mark.subprocess

COMMANDS = ("demo", "serve", "watch", "exec", "record", "replay")


@pytest.mark.parametrize("command", COMMANDS)
async def test_help_has_examples_and_exit_statuses(command: str) -> None:
    status, out, err = await run(command, "--help")
    assert (status, err) == (0, "")
    assert f"usage: qmpevents {command}" in out
    assert "examples:\n  qmpevents " in out
    assert "exit status" in out
    assert "-v, --verbose" in out
    assert all(char.isprintable() or char == "\n" for char in out)  # help is text too


async def test_top_level_help_version_and_no_command() -> None:
    status, out, _ = await run("--help")
    assert status == 0
    assert all(command in out for command in COMMANDS)
    assert await run("--version") == (0, f"qmpevents {__version__}\n", "")
    status, out, err = await run()
    assert status == 2 and out == "" and "usage: qmpevents" in err
    status, _, err = await run("frobnicate")
    assert status == 2
    one_line_error(err)


async def test_verbose_logs_to_stderr_before_or_after_the_command() -> None:
    async with SimulatedVM() as vm:
        status, out, err = await run("exec", vm.socket_path, "query-status")
        assert (status, err) == (0, "")
        for args in (("-v", "exec", vm.socket_path), ("exec", vm.socket_path, "-v")):
            status, out, err = await run(*args, "query-status")
            assert status == 0 and '"running"' in out
            assert "qmpevents.client INFO" in err and "connected" in err


def test_summaries_count_in_the_singular_and_the_plural() -> None:
    from qmpevents.cli.common import plural

    assert [plural(n, "event") for n in (0, 1, 2)] == ["0 events", "1 event", "2 events"]
    assert plural(1, "record is not an event", "records are not events") == (
        "1 record is not an event")
    assert plural(3, "record is not an event", "records are not events") == (
        "3 records are not events")
