"""QEMU's own QMP protocol test (``tests/qtest/qmp-test.c``, ``qmp/protocol``), ported.

The same sequence as ``test_qmp_protocol`` and its ``test_malformed`` (run
before and after negotiation), against real QEMU 7.2 and against ``qmpevents
serve --profile qemu-7.2``.  As in qtest, every request waits for its reply
with a deadline: a lexical error that is answered only when more bytes arrive
fails here, because the reply never comes in time.  ``qtest_qmp`` sends the
compact JSON of its (single-quoted) format, ``qtest_qmp_send_raw`` the bytes as
given (``qtest_qmp`` appends a newline); so do :meth:`QTest.qmp` and
:meth:`QTest.send_raw`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from interop_support import TARGETS, Target, serve

REPLY_DEADLINE = 5.0


class QTest:
    """The few libqtest calls ``qmp-test.c`` uses, over one QMP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def receive_dict(self) -> dict[str, Any]:
        """``qtest_qmp_receive_dict``: the next message (events are not expected here)."""
        line = await asyncio.wait_for(self._reader.readuntil(b"\r\n"), REPLY_DEADLINE)
        value = json.loads(line)
        assert isinstance(value, dict), value
        return value

    async def send_raw(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def qmp(self, request: dict[str, Any] | None) -> dict[str, Any]:
        # libqtest appends a newline: QMP needs a delimiter after a bare scalar
        await self.send_raw(json.dumps(request).encode() + b"\n")
        return await self.receive_dict()

    async def expect_error(self, reply: dict[str, Any], error_class: str) -> None:
        """``qmp_expect_error_and_unref``."""
        assert reply.get("error", {}).get("class") == error_class, reply
        assert isinstance(reply["error"].get("desc"), str), reply

    async def assert_recovered(self) -> None:
        await self.expect_error(await self.qmp({"execute": "no-such-cmd"}), "CommandNotFound")


def check_version(version: Any) -> None:
    """``visit_type_VersionInfo``: qemu.{major,minor,micro} integers and a package string."""
    assert isinstance(version, dict) and set(version) == {"qemu", "package"}, version
    assert isinstance(version["package"], str)
    assert set(version["qemu"]) == {"major", "minor", "micro"}
    assert all(isinstance(n, int) for n in version["qemu"].values())


async def malformed(qt: QTest) -> None:
    """``test_malformed``: each bad input gets its GenericError, and the monitor recovers."""
    for raw in (b"{]\n",  # syntax error
                b"{\xff",  # lexical error: impossible byte outside string
                b"{\x01",  # lexical error: funny control character outside string
                b"{'bad \xff",  # lexical error: impossible byte in string
                b"{'execute': 'nonexistent', 'id':'\n",  # control character in string
                b"%p"):  # lexical error: interpolation
        await qt.send_raw(raw)
        await qt.expect_error(await qt.receive_dict(), "GenericError")
        await qt.assert_recovered()
    for request in (None,  # not even a dictionary
                    {},  # no "execute"
                    {"execute": True},  # "execute" isn't a string
                    {"execute": "no-such-cmd", "arguments": []},  # "arguments" isn't a dict
                    {"execute": "no-such-cmd", "extra": True}):  # extra key
        await qt.expect_error(await qt.qmp(request), "GenericError")


async def qmp_protocol(qt: QTest) -> None:
    """``test_qmp_protocol``."""
    greeting = await qt.receive_dict()
    check_version(greeting["QMP"]["version"])
    assert isinstance(greeting["QMP"]["capabilities"], list)

    # a valid command before the handshake
    await qt.expect_error(await qt.qmp({"execute": "query-version"}), "CommandNotFound")
    await malformed(qt)

    # the handshake, then a repeated one
    assert await qt.qmp({"execute": "qmp_capabilities"}) == {"return": {}}
    await qt.expect_error(await qt.qmp({"execute": "qmp_capabilities"}), "CommandNotFound")

    reply = await qt.qmp({"execute": "query-version"})
    check_version(reply["return"])
    await malformed(qt)

    # 'id'
    reply = await qt.qmp({"execute": "query-name", "id": "cookie#1"})
    assert isinstance(reply["return"], dict) and reply["id"] == "cookie#1", reply
    # a command failure with 'id' (human-monitor-command without its argument)
    reply = await qt.qmp({"execute": "human-monitor-command", "id": 2})
    assert reply["id"] == 2
    await qt.expect_error(reply, "GenericError")


@pytest.mark.parametrize("target", TARGETS)
async def test_qmp_protocol(target: Target) -> None:
    async with serve(target) as path:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            await qmp_protocol(QTest(reader, writer))
        finally:
            writer.close()
