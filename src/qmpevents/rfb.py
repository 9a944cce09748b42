"""The RFB (RFC 6143) wire structures both VNC ends share: versions, security, pixels.

One module for the simulator's server (:mod:`qmpevents.sim.vnc`) and the client
(:mod:`qmpevents.vnc_client`), so the byte layouts and the VNC Authentication
quirk are written once.  That the two ends agree proves nothing on its own: the
witnesses are a real viewer (``vncsnapshot``) against the server and real QEMU
against the client, in the tests.

Importing this module needs nothing beyond the standard library: DES (the
optional ``vnc`` extra, pycryptodome) is imported only when a VNC
Authentication response is computed, so the base install can import every
module that merely mentions VNC.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "SEC_INVALID",
    "SEC_NONE",
    "SEC_VNC",
    "VERSION_3_8",
    "PixelFormat",
    "Rect",
    "parse_version",
    "vnc_auth_response",
]

#: The ProtocolVersion both ends offer (RFC 6143 §7.1.1).
VERSION_3_8 = b"RFB 003.008\n"
#: Security types (RFC 6143 §7.1.2); QEMU offers exactly one of None and VNC.
SEC_INVALID = 0
SEC_NONE = 1
SEC_VNC = 2

_PIXEL_FORMAT = struct.Struct(">BBBBHHHBBB3x")


def parse_version(line: bytes) -> int | None:
    """The minor version of a ProtocolVersion line, mapped to 3, 7 or 8; None if invalid.

    RFC 6143 §7.1.1: a version other than 3.7 and 3.8 is to be handled as 3.3.
    """
    if len(line) != 12 or not line.startswith(b"RFB 003.") or line[11:] != b"\n":
        return None
    digits = line[8:11]
    if not digits.isdigit():
        return None
    minor = int(digits)
    return minor if minor in (7, 8) else 3


def _mirror_bits(byte: int) -> int:
    """The byte with its bit order reversed (bit 0 becomes bit 7)."""
    return int(f"{byte:08b}"[::-1], 2)


def vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """The VNC Authentication response to a 16-byte challenge (RFC 6143 §7.2.2).

    DES-ECB with the password, truncated or NUL-padded to 8 bytes, as the key,
    each key byte with its bits reversed: the historical quirk every VNC
    implementation reproduces.
    """
    from Crypto.Cipher import DES  # lazily: the optional ``vnc`` extra

    key = bytes(_mirror_bits(byte) for byte in password.encode("utf-8")[:8].ljust(8, b"\0"))
    return bytes(DES.new(key, DES.MODE_ECB).encrypt(challenge))


@dataclass(frozen=True)
class PixelFormat:
    """PIXEL_FORMAT (RFC 6143 §7.4): 16 bytes in ServerInit and SetPixelFormat.

    The defaults are QEMU's: 32 bpp, depth 24, little-endian, 0x00RRGGBB.
    """

    bits_per_pixel: int = 32
    depth: int = 24
    big_endian: bool = False
    true_colour: bool = True
    red_max: int = 255
    green_max: int = 255
    blue_max: int = 255
    red_shift: int = 16
    green_shift: int = 8
    blue_shift: int = 0

    def pack(self) -> bytes:
        return _PIXEL_FORMAT.pack(
            self.bits_per_pixel, self.depth, self.big_endian, self.true_colour,
            self.red_max, self.green_max, self.blue_max,
            self.red_shift, self.green_shift, self.blue_shift,
        )  # fmt: skip

    @classmethod
    def unpack(cls, data: bytes) -> PixelFormat:
        bpp, depth, big, tc, rm, gm, bm, rs, gs, bs = _PIXEL_FORMAT.unpack(data)
        return cls(bpp, depth, bool(big), bool(tc), rm, gm, bm, rs, gs, bs)

    @property
    def bytes_per_pixel(self) -> int:
        return self.bits_per_pixel // 8

    def encode(self, rgb: tuple[int, int, int]) -> bytes:
        """One colour of 8-bit channels as this format's pixel bytes (true colour)."""
        r, g, b = rgb
        value = (
            ((r * self.red_max + 127) // 255) << self.red_shift
            | ((g * self.green_max + 127) // 255) << self.green_shift
            | ((b * self.blue_max + 127) // 255) << self.blue_shift
        ) & ((1 << self.bits_per_pixel) - 1)
        return value.to_bytes(self.bytes_per_pixel, "big" if self.big_endian else "little")

    def rgb(self, value: int) -> tuple[int, int, int]:
        """A pixel value as 8-bit channels (the inverse of :meth:`encode`, up to rounding)."""

        def channel(shift: int, top: int) -> int:
            return ((value >> shift) & top) * 255 // top if top else 0

        return (
            channel(self.red_shift, self.red_max),
            channel(self.green_shift, self.green_max),
            channel(self.blue_shift, self.blue_max),
        )


@dataclass
class Rect:
    """A framebuffer rectangle, as in FramebufferUpdateRequest and update headers."""

    x: int
    y: int
    w: int
    h: int

    def union(self, other: Rect) -> Rect:
        """The smallest rectangle covering both."""
        x0, y0 = min(self.x, other.x), min(self.y, other.y)
        x1 = max(self.x + self.w, other.x + other.w)
        y1 = max(self.y + self.h, other.y + other.h)
        return Rect(x0, y0, x1 - x0, y1 - y0)
