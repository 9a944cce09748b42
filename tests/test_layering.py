"""The dependency rules of the layout, and the base install (msgspec only).

* the sans-IO core (catalog, codec, protocol, errors) imports no I/O and no
  other layer: importing it loads no asyncio and no ssl;
* the client imports no server and no simulator; the server and the
  simulator import no client;
* only the CLI, the pytest plugin and the testing kit join both sides.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "qmpevents"

CORE = ("qmpevents.catalog", "qmpevents.codec", "qmpevents.protocol", "qmpevents.errors")
CLIENT = ("qmpevents.client", "qmpevents.fleet")
SERVER_SIDE = ("qmpevents.server", "qmpevents.sim", "qmpevents.qemu_compat")
JOINERS = ("qmpevents.cli", "qmpevents.pytest_plugin", "qmpevents.testing")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module *path* imports, at any depth of its code (lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


MODULES = {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def test_the_layout_has_the_layers_this_test_names() -> None:
    for package in (*CORE, *CLIENT, *SERVER_SIDE, "qmpevents.cli"):
        assert any(_within(module, (package,)) for module in MODULES), package


@pytest.mark.parametrize("module", sorted(MODULES))
def test_dependency_rules(module: str) -> None:
    imported = MODULES[module]
    if module == "qmpevents":
        imported = imported - {"qmpevents.client"}  # lazy, for type checkers only
    if _within(module, CORE):
        forbidden = {name for name in imported if name.split(".")[0] in ("asyncio", "ssl")
                     or _within(name, (*CLIENT, *SERVER_SIDE, *JOINERS))}
        assert not forbidden, f"the sans-IO core {module} imports {sorted(forbidden)}"
    elif _within(module, CLIENT):
        forbidden = {name for name in imported if _within(name, (*SERVER_SIDE, *JOINERS))}
        assert not forbidden, f"the client {module} imports {sorted(forbidden)}"
    elif _within(module, SERVER_SIDE):
        forbidden = {name for name in imported if _within(name, (*CLIENT, *JOINERS))}
        assert not forbidden, f"{module} imports {sorted(forbidden)}"


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONPATH": str(SRC)})
    return set(result.stdout.split())


@pytest.mark.parametrize("statement", [
    "import qmpevents", "import qmpevents.catalog", "import qmpevents.codec",
    "import qmpevents.protocol", "from qmpevents import validate, Event",
])
def test_importing_the_core_loads_no_io(statement: str) -> None:
    loaded = _loaded_after(statement)
    assert not loaded & {"asyncio", "ssl", "socket", "selectors"}
    assert not {name for name in loaded if _within(name, (*CLIENT, *SERVER_SIDE, *JOINERS))}


def test_the_simulator_does_not_load_the_client() -> None:
    loaded = _loaded_after("import qmpevents.sim")
    assert not {name for name in loaded if _within(name, CLIENT)}


def test_the_client_loads_on_first_use_from_the_root() -> None:
    loaded = _loaded_after("import qmpevents; qmpevents.connect")
    assert "qmpevents.client.connection" in loaded


@pytest.fixture(scope="module")
def base_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with only the base install's dependency (msgspec): no pycryptodome."""
    env_dir = tmp_path_factory.mktemp("base-venv")
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    import msgspec
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"msgspec=={msgspec.__version__}"], check=True, capture_output=True)
    return python


@pytest.mark.slow
@pytest.mark.parametrize("argv", [
    ["--help"], ["watch", "--help"], ["exec", "--help"], ["record", "--help"],
    ["replay", "--help"], ["serve", "--help"], ["demo", "--help"],
])
def test_base_install_runs_every_command_that_needs_no_vnc(base_python: Path,
                                                          argv: list[str]) -> None:
    result = subprocess.run([str(base_python), "-m", "qmpevents", *argv], capture_output=True,
                            text=True, env={"PYTHONPATH": str(SRC), "PATH": os.defpath},
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: qmpevents" in result.stdout


@pytest.mark.slow
def test_base_install_serves_and_answers_without_vnc(base_python: Path, tmp_path: Path) -> None:
    check = subprocess.run([str(base_python), "-c", "import Crypto"], capture_output=True)
    assert check.returncode != 0, "the base venv must not have pycryptodome"
    socket_path = tmp_path / "vm.sock"
    env = {"PYTHONPATH": str(SRC), "PATH": os.defpath}
    server = subprocess.Popen([str(base_python), "-m", "qmpevents", "serve", "--qmp",
                               f"unix:{socket_path}"], env=env, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert server.stderr is not None
        assert "QMP listening on" in server.stderr.readline()  # ready: the socket exists
        result = subprocess.run(
            [str(base_python), "-m", "qmpevents", "exec", str(socket_path), "query-status",
             "--timeout", "20"], capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        assert '"status"' in result.stdout
        demo = subprocess.run([str(base_python), "-m", "qmpevents", "demo"],
                              capture_output=True, text=True, env=env, timeout=60)
        assert demo.returncode == 1 and "vnc extra" in demo.stderr
        assert len(demo.stderr.strip().splitlines()) == 1
    finally:
        server.terminate()
        server.wait(timeout=10)
