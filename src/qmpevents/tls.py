"""TLS for QMP over TCP, with QEMU's ``tls-creds-x509`` directory layout.

QEMU's ``-object tls-creds-x509,id=tls0,dir=DIR,endpoint=server,verify-peer=on``
reads fixed file names from *DIR*; so do these helpers, so one directory of
certificates serves QEMU and the simulator alike:

* server: ``ca-cert.pem`` (to verify clients), ``server-cert.pem``,
  ``server-key.pem``;
* client: ``ca-cert.pem`` (to verify the server) and, when the server
  verifies peers, ``client-cert.pem`` and ``client-key.pem``.

The contexts are plain :class:`ssl.SSLContext` objects: pass them as
``ServerOptions(tls=...)`` and ``QMPClient(..., ssl=...)``, or build your own.
Protocol versions below TLS 1.2 are refused, as QEMU's default GnuTLS
priority does.
"""

from __future__ import annotations

import os
import ssl

from qmpevents.errors import TLSCredsError as TLSCredsError  # re-exported: its old home

CA_CERT = "ca-cert.pem"
SERVER_CERT = "server-cert.pem"
SERVER_KEY = "server-key.pem"
CLIENT_CERT = "client-cert.pem"
CLIENT_KEY = "client-key.pem"


def _need(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise TLSCredsError(f"{directory}: no {name} (QEMU's tls-creds-x509 layout)")
    return path


def server_context(creds_dir: str | os.PathLike[str], *,
                   verify_peer: bool = False) -> ssl.SSLContext:
    """A server context from *creds_dir*; *verify_peer* requires a client certificate
    signed by ``ca-cert.pem`` (QEMU's ``verify-peer=on``)."""
    directory = os.fspath(creds_dir)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(_need(directory, SERVER_CERT), _need(directory, SERVER_KEY))
    if verify_peer:
        context.load_verify_locations(_need(directory, CA_CERT))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(creds_dir: str | os.PathLike[str]) -> ssl.SSLContext:
    """A client context from *creds_dir*: trusts ``ca-cert.pem`` only, checks the host
    name, and presents ``client-cert.pem`` / ``client-key.pem`` when both exist."""
    directory = os.fspath(creds_dir)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=_need(directory, CA_CERT))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    cert = os.path.join(directory, CLIENT_CERT)
    key = os.path.join(directory, CLIENT_KEY)
    if os.path.isfile(cert) and os.path.isfile(key):
        context.load_cert_chain(cert, key)
    return context
