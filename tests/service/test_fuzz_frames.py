"""Truncated gRPC frames on a raw HTTP/2 connection, against a real replica.

A generic grpc call can only send whole messages, so this test speaks HTTP/2
itself: a request whose gRPC length prefix promises more bytes than the
stream carries before END_STREAM, and a connection dropped in the middle of
a frame. Request headers use HPACK literals (no table, no Huffman), which
every decoder must accept. The replica must end the stream (trailers or
RST_STREAM) rather than wait for bytes that never come, and keep answering
a normal GetUser. Without a client deadline grpc core would wait for good;
the replica's default deadline (MESH_DEFAULT_CALL_TIMEOUT) ends such a call
with DEADLINE_EXCEEDED; with a client deadline the stream ends at that one.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import grpc
import pytest

from tests.service.fuzz_support import (
    READER,
    ThreadedReplica,
    assert_still_serving,
    running_replica,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
#: How long the server may take to end a stream it cannot complete.
WAIT_S = 3.0
#: The replica's bound on calls without a deadline (MESH_DEFAULT_CALL_TIMEOUT), below WAIT_S.
CALL_BOUND_S = 1.0


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    """One HTTP/2 frame (RFC 9113 section 4.1)."""
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


def _literal(name: str, value: str) -> bytes:
    # "Literal Header Field without Indexing, New Name" (RFC 7541 6.2.2),
    # lengths below 127 so one byte each.
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def request_headers(address: str, method: str) -> bytes:
    token = dict(READER)["authorization"]
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", method),
        (":authority", address),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    block = b"".join(_literal(n, v) for n, v in fields)
    # The bearer token is longer than one length byte: a 7-bit prefix integer.
    name, value = b"authorization", token.encode()
    block += b"\x00" + bytes([len(name)]) + name + _integer(len(value)) + value
    return block


def _integer(n: int) -> bytes:
    """An HPACK integer with a 7-bit prefix (RFC 7541 5.1), Huffman bit clear."""
    if n < 127:
        return bytes([n])
    out, n = bytearray([127]), n - 127
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    out.append(n)
    return bytes(out)


def read_frames(sock: socket.socket) -> Iterator[tuple[int, int, int]]:
    """(type, flags, stream) of each frame the server sends, until it closes."""
    buffer = b""
    while True:
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags, stream = struct.unpack(">BBI", buffer[3:9])
            buffer = buffer[9 + length :]
            yield kind, flags, stream & 0x7FFFFFFF
        chunk = sock.recv(65536)
        if not chunk:
            return
        buffer += chunk


@pytest.fixture(scope="module")
def replica() -> Iterator[ThreadedReplica]:
    yield from running_replica(default_call_timeout=CALL_BOUND_S)


@pytest.fixture(scope="module")
def channel(replica: ThreadedReplica) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(replica.address) as ch:
        yield ch


def _connect(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
    sock.sendall(PREFACE + frame(SETTINGS, 0, 0, b""))
    return sock


def _stream_ended(sock: socket.socket) -> bool:
    """Whether the server ends stream 1 (trailers or RST_STREAM) before closing."""
    try:
        for kind, flags, stream in read_frames(sock):
            if kind == SETTINGS and not flags & ACK:
                sock.sendall(frame(SETTINGS, ACK, 0, b""))
            if stream == 1 and (kind == RST_STREAM or (kind == HEADERS and flags & END_STREAM)):
                return True
    except TimeoutError:
        pass
    return False


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x00\x00\x00\x64abc",  # 100 bytes promised, 3 sent
        b"\x00\x00\x00",  # the 5-byte prefix itself cut
        b"\x00\xff\xff\xff\xff" + b"x" * 16,  # a 4 GiB message promised
    ],
    ids=["short message", "short prefix", "huge prefix"],
)
def test_a_truncated_frame_ends_the_stream(
    replica: ThreadedReplica, channel: grpc.Channel, body: bytes
) -> None:
    with _connect(replica.address) as sock:
        headers = request_headers(replica.address, "/meshdemo.v1.UserService/GetUser")
        sock.sendall(frame(HEADERS, END_HEADERS, 1, headers) + frame(DATA, END_STREAM, 1, body))
        assert _stream_ended(sock)
    assert_still_serving(channel)


def test_a_truncated_frame_with_a_deadline_ends_at_the_deadline(
    replica: ThreadedReplica, channel: grpc.Channel
) -> None:
    with _connect(replica.address) as sock:
        headers = request_headers(replica.address, "/meshdemo.v1.UserService/GetUser")
        headers += _literal("grpc-timeout", "1S")
        body = b"\x00\x00\x00\x00\x64abc"
        sock.sendall(frame(HEADERS, END_HEADERS, 1, headers) + frame(DATA, END_STREAM, 1, body))
        assert _stream_ended(sock)
    assert_still_serving(channel)


def test_a_connection_dropped_mid_frame_leaves_the_server_serving(
    replica: ThreadedReplica, channel: grpc.Channel
) -> None:
    for _ in range(20):
        with _connect(replica.address) as sock:
            headers = request_headers(replica.address, "/meshdemo.v1.UserService/Chat")
            data = frame(DATA, 0, 1, b"\x00\x00\x00\x00\x10" + b"\x0a\x0e\x12\x0c")
            sock.sendall(frame(HEADERS, END_HEADERS, 1, headers) + data[:-3])
    assert_still_serving(channel)


def test_a_unary_call_without_a_request_message_ends_the_stream(
    replica: ThreadedReplica, channel: grpc.Channel
) -> None:
    with _connect(replica.address) as sock:
        headers = request_headers(replica.address, "/meshdemo.v1.UserService/GetUser")
        sock.sendall(frame(HEADERS, END_HEADERS | END_STREAM, 1, headers))
        assert _stream_ended(sock)
    assert_still_serving(channel)
