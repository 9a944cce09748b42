"""The README's examples run, and its event table is the catalog's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qmpevents.catalog import catalog_markdown

pytestmark = pytest.mark.subprocess

README = Path(__file__).parent.parent / "README.md"
TEXT = README.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)


def test_event_table_is_generated_from_the_catalog() -> None:
    table = TEXT.split("<!-- catalog:begin -->\n")[1].split("<!-- catalog:end -->")[0]
    assert table == catalog_markdown()


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = cwd / "example.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def test_async_client_example_runs(tmp_path: Path) -> None:
    (code,) = [b for b in BLOCKS if "async def main" in b]
    result = _run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "running"
    assert "BLOCK_IO_ERROR" in result.stdout and " stop\n" in result.stdout
    assert '"event": "SHUTDOWN"' in result.stdout


def test_sync_client_example_runs(tmp_path: Path) -> None:
    (code,) = [b for b in BLOCKS if "connect_sync" in b]
    sock = tmp_path / "vm.sock"
    server = subprocess.Popen([sys.executable, "-m", "qmpevents", "serve",
                               "--qmp", f"unix:{sock}"], stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        assert "listening" in server.stderr.readline()  # the socket exists from here on
        result = _run(code.replace("/tmp/vm.sock", str(sock)), tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["STOP", "paused"]
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_pytest_fixture_example_passes(tmp_path: Path) -> None:
    (code,) = [b for b in BLOCKS if "simulated_vm" in b]
    (tmp_path / "test_example.py").write_text(code)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
         "asyncio_mode=auto", str(tmp_path / "test_example.py")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_sans_io_example_runs(tmp_path: Path) -> None:
    (code,) = [b for b in BLOCKS if "ServerConnection(" in b]
    result = _run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith('{"QMP": ') and lines[1] == '{"return": {}}'
    assert '"event": "STOP"' in lines[2] and lines[3] == '{"return": {}, "id": 1}'


def test_testing_kit_example_runs(tmp_path: Path) -> None:
    (code,) = [b for b in BLOCKS if "qmpevents.testing" in b]
    result = _run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "['POWERDOWN'] b'{\"return\": {}, \"id\": 1}\\r\\n'", "running", "guest-shutdown",
        "guest-reset", "GenericError"]
    assert result.stderr == ""  # FakeQMP shuts down without asyncio complaining
