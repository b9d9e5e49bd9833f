"""A minimal RFB (VNC) client for tests: the handshake with no authentication, one raw
full-screen update, key events; and OCR of a screen with tesseract. Enough to prove that the
bytes relayed through Corral are a working VNC session showing the guest's console."""
from __future__ import annotations

import socket
import struct
import subprocess
from pathlib import Path

#: X keysyms of the keys the tests type (letters, digits and punctuation are their ASCII).
KEYSYM_RETURN = 0xFF0D


class RFBClient:
    """Over any connected stream socket (the `corral vnc` proxy's port)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.width = self.height = 0
        self.name = ""

    def _read(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError(f"the server closed the connection ({len(data)} of {n} bytes read)")
            data += chunk
        return bytes(data)

    def handshake(self) -> None:
        version = self._read(12)
        if not version.startswith(b"RFB "):
            raise ConnectionError(f"not an RFB server: {version!r}")
        self.sock.sendall(b"RFB 003.008\n")
        count = self._read(1)[0]
        if count == 0:
            reason = self._read(struct.unpack(">I", self._read(4))[0])
            raise ConnectionError(f"the server refused: {reason!r}")
        types = self._read(count)
        if 1 not in types:
            raise ConnectionError(f"the server wants authentication: security types {list(types)}")
        self.sock.sendall(b"\x01")
        if struct.unpack(">I", self._read(4))[0] != 0:
            raise ConnectionError("security handshake failed")
        self.sock.sendall(b"\x01")  # ClientInit: shared
        self.width, self.height = struct.unpack(">HH", self._read(4))
        self._read(16)  # the server's pixel format: replaced below
        self.name = self._read(struct.unpack(">I", self._read(4))[0]).decode(errors="replace")
        # 32 bits per pixel, depth 24, little-endian, true colour, red at bit 16, green 8, blue 0.
        self.sock.sendall(struct.pack(">BxxxBBBBHHHBBBxxx", 0, 32, 24, 0, 1, 255, 255, 255, 16, 8, 0))
        self.sock.sendall(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: raw only

    def screen(self) -> bytes:
        """The whole screen as BGRX pixels (width * height * 4 bytes)."""
        self.sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, self.width, self.height))
        frame = bytearray(self.width * self.height * 4)
        while True:
            kind = self._read(1)[0]
            if kind == 0:  # FramebufferUpdate
                self._read(1)
                for _ in range(struct.unpack(">H", self._read(2))[0]):
                    x, y, w, h, encoding = struct.unpack(">HHHHi", self._read(12))
                    if encoding != 0:
                        raise ConnectionError(f"unrequested encoding {encoding}")
                    pixels = self._read(w * h * 4)
                    for row in range(h):
                        start = ((y + row) * self.width + x) * 4
                        frame[start:start + w * 4] = pixels[row * w * 4:(row + 1) * w * 4]
                return bytes(frame)
            if kind == 1:  # SetColourMapEntries
                _, _, n = struct.unpack(">xHH", self._read(5))
                self._read(n * 6)
            elif kind == 2:  # Bell
                continue
            elif kind == 3:  # ServerCutText
                self._read(3)
                self._read(struct.unpack(">I", self._read(4))[0])
            else:
                raise ConnectionError(f"unknown server message {kind}")

    def type(self, text: str) -> None:
        """Key presses and releases for ``text`` ("\\n" is Return)."""
        for char in text:
            keysym = KEYSYM_RETURN if char == "\n" else ord(char)
            self.sock.sendall(struct.pack(">BBxxI", 4, 1, keysym) + struct.pack(">BBxxI", 4, 0, keysym))


def write_pgm(path: Path, bgrx: bytes, width: int, height: int, scale: int = 2) -> None:
    """A grey, inverted (dark text on white, what OCR reads best), ``scale``-times larger image."""
    rows = []
    for y in range(height):
        line = bytearray()
        for x in range(width):
            b, g, r = bgrx[(y * width + x) * 4:(y * width + x) * 4 + 3]
            line += bytes([255 - max(r, g, b)]) * scale
        rows.append(bytes(line) * scale)
    path.write_bytes(f"P5 {width * scale} {height * scale} 255\n".encode() + b"".join(rows))


def ocr(image: Path) -> str:
    """tesseract's reading of ``image`` (PGM, PNG, ...)."""
    return subprocess.run(["tesseract", str(image), "-", "--psm", "6"], capture_output=True, text=True,
                          check=True).stdout
