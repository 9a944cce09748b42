"""Test certificates in QEMU's ``tls-creds-x509`` layout, made with the ``openssl`` CLI.

One call builds every directory the TLS tests need, so the simulator and real
QEMU are tested with the same files.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(directory: Path, name: str, subject: str, ext: str) -> None:
    _openssl("req", *_KEY, "-keyout", f"{name}-key.pem", "-out", f"{name}.csr",
             "-subj", subject, cwd=directory)
    (directory / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
             "-CAcreateserial", "-out", f"{name}-cert.pem", "-days", "2",
             "-extfile", f"{name}.ext", cwd=directory)


def make_pki(root: Path) -> dict[str, Path]:
    """QEMU-layout directories under *root*: ``server`` (with the CA), ``client`` (CA +
    client cert), ``anonymous`` (CA only), ``stranger`` (a client cert from another CA)."""
    dirs = {name: root / name for name in ("ca", "other", "server", "client", "anonymous",
                                           "stranger")}
    for path in dirs.values():
        path.mkdir()
    for ca, subject in (("ca", "/CN=qmpevents test CA"), ("other", "/CN=another CA")):
        _openssl("req", "-x509", *_KEY, "-keyout", "ca-key.pem", "-out", "ca-cert.pem",
                 "-days", "2", "-subj", subject, cwd=dirs[ca])
    _issue(dirs["ca"], "server", "/CN=localhost",
           "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _issue(dirs["ca"], "client", "/CN=manager", "extendedKeyUsage=clientAuth\n")
    _issue(dirs["other"], "client", "/CN=intruder", "extendedKeyUsage=clientAuth\n")
    for name in ("server", "client", "anonymous", "stranger"):
        shutil.copy(dirs["ca"] / "ca-cert.pem", dirs[name])
    for file in ("server-cert.pem", "server-key.pem"):
        shutil.copy(dirs["ca"] / file, dirs["server"])
    for file in ("client-cert.pem", "client-key.pem"):
        shutil.copy(dirs["ca"] / file, dirs["client"])
        shutil.copy(dirs["other"] / file, dirs["stranger"])
    return dirs
