"""Real QMP clients we did not write, each with its script (``tests/clients/``).

Every client is installed from its registry the ordinary way and cached under
:data:`CACHE` (``$QMPEVENTS_INTEROP_CACHE``, default
``$XDG_CACHE_HOME/qmpevents/interop`` or ``~/.cache/qmpevents/interop``: never
the source tree), so only the first run pays for downloads and builds:

* ``go-qemu`` -- Debian's ``golang-github-digitalocean-go-qemu-dev``, built
  with Debian's ``golang-go`` in GOPATH mode (the package's own layout);
* ``ganeti`` -- ``QmpConnection`` from Debian's ``ganeti-3.0``, fetched with
  ``apt-get download`` and unpacked with ``dpkg -x``, run by Debian's python3;
* ``pypi-qmp`` -- PyPI ``qmp`` 1.1.0 (the ``test`` extra);
* ``node-qemu-qmp`` -- npm ``qemu-qmp`` 0.5.0 on Debian's nodejs
  (``install_node_clients.sh``);
* ``qmp-shell`` and ``qmp-shell-hmp`` (``-H``) -- from ``qemu.qmp``.

:func:`run_client` returns what the client printed, as lines.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIENTS_DIR = ROOT / "tests" / "clients"
CACHE = Path(os.environ.get("QMPEVENTS_INTEROP_CACHE") or Path(
    os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qmpevents" / "interop")
DEBIAN_PYTHON = "/usr/bin/python3"
RUN_DEADLINE = 60.0

#: What ``qmp-shell`` is fed (one command a line; an empty line prints the events).
QMP_SHELL_INPUT = (b"query-status\nquery-name\ncont\nstop\n\nno-such-command\n"
                   b"query-status bogus=1\nquery-version\n")
#: What ``qmp-shell -H`` is fed: HMP commands.
HMP_SHELL_INPUT = b"info status\ninfo name\ninfo version\nstop\ninfo status\ncont\ninfo status\n" \
                  b"bogus-command\n"


def _missing(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (apt-get install {package}; ./dev test does)")


def _checked(argv: list[str], **kwargs: object) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                            check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr[-2000:]}")


def go_qemu_client() -> list[str]:
    """Build (once per source version) the go-qemu program; its argv."""
    _missing("go", "golang-go")
    source = CLIENTS_DIR / "goqemu" / "main.go"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    binary = CACHE / "go" / f"goqemu-client-{digest}"
    if not binary.exists():
        gopath = Path("/usr/share/gocode")
        if not (gopath / "src/github.com/digitalocean/go-qemu/qemu").is_dir():
            pytest.skip("go-qemu not installed (apt-get install "
                        "golang-github-digitalocean-go-qemu-dev; ./dev test does)")
        binary.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(gopath),
               "GOCACHE": str(CACHE / "go" / "build-cache"), "GOFLAGS": ""}
        _checked(["go", "build", "-o", str(binary), "."], cwd=source.parent, env=env)
    return [str(binary)]


def ganeti_tree() -> Path:
    """Debian's ganeti-3.0 unpacked into the cache (``apt-get download`` + ``dpkg -x``)."""
    _missing("apt-get", "apt")
    home = CACHE / "ganeti"
    tree = home / "root" / "usr" / "share" / "ganeti" / "3.0"
    if not (tree / "ganeti" / "hypervisor" / "hv_kvm" / "monitor.py").exists():
        home.mkdir(parents=True, exist_ok=True)
        for old in home.glob("*.deb"):
            old.unlink()
        _checked(["apt-get", "download", "-q", "ganeti-3.0"], cwd=home)
        (deb,) = home.glob("ganeti-3.0_*.deb")
        shutil.rmtree(home / "root", ignore_errors=True)
        _checked(["dpkg", "-x", str(deb), str(home / "root")])
    return tree


def ganeti_client() -> tuple[list[str], dict[str, str]]:
    if not os.access(DEBIAN_PYTHON, os.X_OK):
        pytest.skip("Debian's python3 not found")
    env = {**os.environ, "PYTHONPATH": str(ganeti_tree()), "PYTHONNOUSERSITE": "1"}
    return [DEBIAN_PYTHON, str(CLIENTS_DIR / "ganeti_client.py")], env


def node_client() -> tuple[list[str], dict[str, str]]:
    _missing("node", "nodejs")
    dest = CACHE / "node"
    _checked(["bash", str(CLIENTS_DIR / "install_node_clients.sh"), str(dest)])
    env = {**os.environ, "NODE_PATH": str(dest / "node_modules")}
    return ["node", str(CLIENTS_DIR / "node" / "qemu_qmp_client.js")], env


ClientSetup = Callable[[], tuple[list[str], dict[str, str] | None, bytes | None]]

CLIENTS: dict[str, ClientSetup] = {
    "go-qemu": lambda: (go_qemu_client(), None, None),
    "ganeti": lambda: (*ganeti_client(), None),
    "pypi-qmp": lambda: ([sys.executable, str(CLIENTS_DIR / "pypi_qmp_client.py")], None, None),
    "node-qemu-qmp": lambda: (*node_client(), None),
    "qmp-shell": lambda: ([sys.executable, "-m", "qemu.qmp.qmp_shell", "-p"], None,
                          QMP_SHELL_INPUT),
    "qmp-shell-hmp": lambda: ([sys.executable, "-m", "qemu.qmp.qmp_shell", "-H"], None,
                              HMP_SHELL_INPUT),
}


async def run_client(argv: list[str], env: dict[str, str] | None, stdin: bytes | None,
                     socket_path: str) -> list[str]:
    """Run one client script against *socket_path*; its output lines (stderr on failure)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, socket_path, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin or b""), RUN_DEADLINE)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        return [*out.decode(errors="replace").splitlines(),
                f"<timeout after {RUN_DEADLINE} s>", *err.decode(errors="replace").splitlines()]
    lines = out.decode(errors="replace").splitlines()
    if proc.returncode != 0:
        lines += [f"<exit status {proc.returncode}>",
                  *err.decode(errors="replace").splitlines()[-15:]]
    return lines
