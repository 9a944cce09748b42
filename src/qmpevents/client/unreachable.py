"""Why an address could not be reached, in words that name it: :class:`ConnectError`.

The OS says ``[Errno 2] No such file or directory`` and ``Connection
refused`` without the path, a regular file refuses like a dead socket, and a
TLS server that refuses the client's certificate (or its lack of one) just
closes the session; these helpers turn each into one error that names the
address and says what happened.
"""

from __future__ import annotations

import errno as _errno
import os
import socket
import ssl
import stat

from qmpevents.addresses import Address, UnixAddress
from qmpevents.errors import ConnectError

CLIENT_CERT_HINT = ("a server that verifies peers needs a client certificate signed by a CA "
                    "it trusts (client-cert.pem and client-key.pem beside ca-cert.pem)")


def connect_error(address: Address, exc: OSError, *, tls: bool) -> ConnectError:
    """*exc*, raised while connecting to *address*, as a :class:`ConnectError`.

    (An :class:`ssl.SSLError` is left as it is: it says what failed, and
    callers catch ``ssl.SSLCertVerificationError`` by its class.)
    """
    where = str(address)
    if tls and isinstance(exc, ConnectionResetError | BrokenPipeError):
        return ConnectError(where, f"the server refused the TLS handshake (connection "
                                   f"reset); {CLIENT_CERT_HINT}", exc.errno)
    # The OS's words: asyncio's TCP connect puts its own text in strerror
    # ("Connect call failed ('127.0.0.1', 1)") where the OS says "Connection refused".
    reason = (os.strerror(exc.errno)
              if exc.errno is not None and exc.errno > 0 and not isinstance(exc, socket.gaierror)
              else exc.strerror or str(exc) or type(exc).__name__)  # (getaddrinfo's own codes)
    if isinstance(address, UnixAddress) and exc.errno == _errno.ECONNREFUSED:
        what = _not_a_socket(address.path)
        if what is not None:
            reason = f"not a socket ({what})"
    return ConnectError(where, reason, exc.errno)


def tls_refused(address: Address, cause: BaseException | None) -> ConnectError:
    """A TLS session the server closed before its greeting: it refused this client.

    With TLS 1.3 the client's handshake completes before the server has
    checked the client's certificate, so the refusal comes as an alert (or a
    bare end of the session) instead of a failed handshake.
    """
    alert = f" (ssl alert: {_ssl_reason(cause)})" if isinstance(cause, ssl.SSLError) else ""
    return ConnectError(str(address), f"the TLS server closed the session before its greeting"
                                      f"{alert}: it refused this client; {CLIENT_CERT_HINT}")


def _ssl_reason(exc: ssl.SSLError) -> str:
    """``tlsv13 alert certificate required``: the OpenSSL reason, readable."""
    if exc.reason:
        return exc.reason.lower().replace("_", " ")
    return exc.strerror or str(exc)


def _not_a_socket(path: str) -> str | None:
    """What *path* is when it exists and is not a socket (None otherwise)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISSOCK(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a special file"
