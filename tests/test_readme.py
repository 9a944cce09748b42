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
    assert "['STOP']\n" in result.stdout  # one batch
    assert '"event": "SHUTDOWN"' in result.stdout


def test_many_vms_example_runs(tmp_path: Path) -> None:
    (code,) = [b for b in BLOCKS if "watch_vms" in b]
    result = _run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["101 attached", "101 STOP"]


def test_sync_client_example_runs(tmp_path: Path) -> None:
    (code,) = [b for b in BLOCKS if "connect_sync" in b and "simulated_vm" not in b]
    sock = tmp_path / "vm.sock"
    server = subprocess.Popen([sys.executable, "-m", "qmpevents", "serve",
                               "--qmp", f"unix:{sock}"], stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        assert "listening" in server.stderr.readline()  # the socket exists from here on
        result = _run(code.replace("/tmp/vm.sock", str(sock)), tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["STOP", "paused", "RESET"]
    finally:
        server.terminate()
        server.wait(timeout=10)


def _pytest(test_file: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options,
         str(test_file)],
        capture_output=True, text=True, timeout=60, cwd=test_file.parent,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_pytest_fixture_example_passes(tmp_path: Path, mode: str) -> None:
    (code,) = [b for b in BLOCKS if "simulated_vm" in b]
    (tmp_path / "test_example.py").write_text(code)
    result = _pytest(tmp_path / "test_example.py", "-o", f"asyncio_mode={mode}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


SYNC_TEST_WITH_THE_ASYNC_FIXTURE = """
import qmpevents

def test_status(simulated_vm):
    with qmpevents.connect_sync(simulated_vm.socket_path) as qmp:
        qmp.execute("query-status")
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_a_sync_test_with_the_async_fixture_is_told_which_to_use(tmp_path: Path,
                                                                  mode: str) -> None:
    """It timed out as a busy monitor (the VM's loop does not run during a sync test)."""
    (tmp_path / "test_wrong.py").write_text(SYNC_TEST_WITH_THE_ASYNC_FIXTURE)
    result = _pytest(tmp_path / "test_wrong.py", "-o", f"asyncio_mode={mode}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "is a sync test" in result.stdout and "use simulated_vm_thread" in result.stdout
    assert "MonitorBusy" not in result.stdout


HYPOTHESIS_ASYNC_TEST = """
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import qmpevents

@pytest.mark.asyncio
@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(-100, 100))
async def test_rtc(simulated_vm, offset):
    async with qmpevents.connect(simulated_vm.socket_path) as qmp:
        assert (await qmp.execute("query-status"))["status"] == "running"
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_an_async_hypothesis_test_keeps_the_async_fixture(tmp_path: Path, mode: str) -> None:
    """Hypothesis wraps an async test in a sync function: not a sync test."""
    (tmp_path / "test_hyp.py").write_text(HYPOTHESIS_ASYNC_TEST)
    result = _pytest(tmp_path / "test_hyp.py", "-o", f"asyncio_mode={mode}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


NO_PYTEST_ASYNCIO = """
import sys

class NotInstalled:  # as if pytest-asyncio were not installed: importing it fails
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pytest_asyncio":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NotInstalled())
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:asyncio", sys.argv[1]]))
"""


def test_the_plugin_loads_without_pytest_asyncio(tmp_path: Path) -> None:
    (code,) = [b for b in BLOCKS if "simulated_vm" in b]
    sync_only = code.split("@pytest.mark.asyncio")[0] + code.split("\n\n\n")[-1]
    (tmp_path / "test_example.py").write_text(sync_only)
    result = subprocess.run([sys.executable, "-c", NO_PYTEST_ASYNCIO,
                             str(tmp_path / "test_example.py")],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
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


def test_python_examples_pass_mypy_strict(tmp_path: Path) -> None:
    for number, block in enumerate(BLOCKS):
        (tmp_path / f"example_{number}.py").write_text(block)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         *sorted(str(p) for p in tmp_path.glob("example_*.py"))],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
