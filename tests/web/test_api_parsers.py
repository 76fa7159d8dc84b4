"""The API's multipart parser (web/api/parsers.py) as the network hands it a body: in pieces of
any size. What arrives must be what was sent, but for a part header that is not UTF-8."""

from __future__ import annotations

import io

import pytest

from web.api.parsers import NAME_NOT_UTF8_MARK, _PartHeaderGuard

BOUNDARY = b"b0undary"


class Trickle(io.RawIOBase):
    """A request body that arrives `piece` bytes at a time."""

    def __init__(self, data: bytes, piece: int) -> None:
        self.data, self.piece, self.at = data, piece, 0

    def read(self, size: int = -1) -> bytes:
        out = self.data[self.at : self.at + min(self.piece, size if size > 0 else self.piece)]
        self.at += len(out)
        return out


def body(name: bytes, content: bytes) -> bytes:
    return (
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="patient_id"\r\n\r\nMRN-1\r\n'
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="files"; filename="' + name + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n--" + BOUNDARY + b"--\r\n"
    )


def received(data: bytes, piece: int) -> bytes:
    guard = _PartHeaderGuard(Trickle(data, piece), BOUNDARY)
    return b"".join(iter(lambda: guard.read(65536), b""))


# File content with what looks like the end of a header, Latin-1 bytes and part of a delimiter.
CONTENT = bytes(range(256)) * 40 + b"\r\n\r\n\xe9--b0und" + bytes(range(256))


@pytest.mark.parametrize("piece", [1, 3, 7, 64, 1000, 1 << 20])
def test_a_body_arrives_unchanged_whatever_pieces_it_comes_in(piece: int) -> None:
    sent = body("th\u00f6rax-\u80f8.dcm".encode(), CONTENT)  # UTF-8, not ASCII: untouched
    assert received(sent, piece) == sent


@pytest.mark.parametrize("piece", [1, 5, 1 << 20])
def test_only_a_header_that_is_not_utf8_is_rewritten_and_marked(piece: int) -> None:
    got = received(body(b"r\xe9sum\xe9.dcm", CONTENT), piece)

    header = 'filename="r\ufffdsum\ufffd.dcm"\r\nContent-Type: application/octet-stream; '
    assert (header + NAME_NOT_UTF8_MARK + "=1\r\n\r\n").encode() in got
    assert got.endswith(b"\r\n\r\n" + CONTENT + b"\r\n--" + BOUNDARY + b"--\r\n")
