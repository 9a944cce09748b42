"""The fleet commands' argument types and nats:// targets: usage errors, not surprises."""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import pytest

from qmpevents.cli.fleet_args import duration, since, size
from qmpevents.cli.stream import StreamTargetError, parse_targets
from qmpevents.fleet.broker import CredentialsError, read_user_password


def test_durations_and_sizes() -> None:
    assert [duration(t) for t in ("90", "30s", "10m", "2h", "7d", "1.5m")] == [
        90, 30, 600, 7200, 604800, 90]
    assert [size(t) for t in ("4096", "512M", "1G", "64KiB", "2gb")] == [
        4096, 512 << 20, 1 << 30, 64 << 10, 2 << 30]
    for bad in ("", "0", "-5m", "10 parsecs", "1e9"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration(bad)
    for bad in ("", "0", "1.5G", "lots"):
        with pytest.raises(argparse.ArgumentTypeError):
            size(bad)


def test_since_takes_all_a_duration_or_a_local_time() -> None:
    assert since("all") == "all"
    back = since("10m")
    assert isinstance(back, float) and abs(back - (time.time() - 600)) < 5
    local = datetime.datetime(2026, 12, 1, 15, 0, 0)
    assert since("2026-12-01T15:00:00") == local.timestamp()
    assert since("2026-12-01T15:00:00+00:00") == datetime.datetime(
        2026, 12, 1, 15, tzinfo=datetime.UTC).timestamp()
    with pytest.raises(argparse.ArgumentTypeError):
        since("yesterday")


def test_nats_targets_are_servers_and_one_filter() -> None:
    assert parse_targets(["nats://a:4222/qmp.h1.>", "nats://b"]) == (
        ["nats://a:4222", "nats://b:4222"], "qmp.h1.>")
    assert parse_targets(["nats://u:p@a:1"]) == (["nats://u:p@a:1"], "qmp.>")
    for bad in (["nats://a/qmp.x.>", "nats://b/qmp.y.>"], ["nats://a", "/tmp/vm.sock"],
                ["nats://a:port"], ["nats:///qmp.>"]):
        with pytest.raises(StreamTargetError):
            parse_targets(bad)


def test_user_password_file(tmp_path: Path) -> None:
    good = tmp_path / "nats.pw"
    good.write_text("agent\ns3cret\n")
    assert read_user_password(str(good)) == ("agent", "s3cret")
    bad = tmp_path / "bad.pw"
    bad.write_text("only-a-user\n")
    with pytest.raises(CredentialsError):
        read_user_password(str(bad))
    with pytest.raises(CredentialsError):
        read_user_password(str(tmp_path / "missing"))


def test_the_fleet_modules_import_without_the_fleet_extra() -> None:
    """nats-py and prometheus-client are imported when used, never at import time."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['nats'] = None; sys.modules['prometheus_client'] = None\n"
            "import qmpevents.fleet, qmpevents.fleet.agent, qmpevents.fleet.publisher\n"
            "import qmpevents.fleet.metrics, qmpevents.cli.agent, qmpevents.cli.exporter\n"
            "from qmpevents.cli.main import build_parser; build_parser()\n"
            "from qmpevents.fleet.deps import MissingDependency, require\n"
            "try:\n    require('nats')\nexcept MissingDependency as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "nats-py is not installed (pip install 'qmpevents[fleet]')\n"
