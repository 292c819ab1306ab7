"""Exec form of a module server's gRPC probe: ``python -m jac_splice.probe --port 50051``.

Kubernetes older than 1.24 has no native ``grpc:`` probes; there jac-orc rewrites a template's
gRPC probe into an exec probe running this command with the same port and service. It asks the
module server's standard health service (``grpc.health.v1.Health/Check``, unauthenticated) the
question the kubelet's gRPC probe would ask and exits 0 only if the answer is SERVING; otherwise it
prints why to stderr and exits 1.

It speaks just enough HTTP/2 (prior knowledge, no TLS) with the standard library alone (no grpcio
in the module image; the native client has no health call): a probe runs every few seconds inside
a small container, so it does one request on one connection and exits.

    python -m jac_splice.probe [--host 127.0.0.1] [--port 50051] [--service NAME] [--timeout 1]
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
STREAM = 1
MAX_FRAMES = 1000
SERVING = 1
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


class ProbeError(Exception):
    """The server is not SERVING, or could not be asked."""


def _hpack_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out = [limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _header(name: str, value: str) -> bytes:
    """A literal header field without indexing, new name, no Huffman coding (RFC 7541 6.2.2)."""
    n, v = name.encode("ascii"), value.encode("ascii")
    return b"\x00" + _hpack_int(len(n), 7) + n + _hpack_int(len(v), 7) + v


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def request(host: str, port: int, service: str) -> bytes:
    """The client's bytes: preface, SETTINGS, HEADERS and one DATA frame with the request."""
    headers = b"".join(
        _header(k, v)
        for k, v in (
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/grpc.health.v1.Health/Check"),
            (":authority", f"{host}:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        )
    )
    name = service.encode("utf-8")
    message = (
        (b"\x0a" + _varint(len(name)) + name) if name else b""
    )  # HealthCheckRequest.service = 1
    body = b"\x00" + struct.pack(">I", len(message)) + message
    return (
        PREFACE
        + _frame(SETTINGS, 0, 0)
        + _frame(HEADERS, END_HEADERS, STREAM, headers)
        + _frame(DATA, END_STREAM, STREAM, body)
    )


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ProbeError("truncated health answer")


def status_of(message: bytes) -> int:
    """HealthCheckResponse.status (field 1, an enum); absent means UNKNOWN (proto3 default)."""
    pos, status = 0, 0
    while pos < len(message):
        tag, pos = _read_varint(message, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(message, pos)
            if field == 1:
                status = value
        elif wire == 2:
            length, pos = _read_varint(message, pos)
            pos += length
        else:
            raise ProbeError(f"unexpected wire type {wire} in the health answer")
    return status


class _Reader:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline, self.buf = sock, deadline, b""

    def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ProbeError("the server closed the connection without answering")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def check(host: str, port: int, service: str, timeout: float) -> int:
    """The health status the server reports for ``service``; raises ProbeError when it gives none."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request(host, port, service))
        reader = _Reader(sock, deadline)
        data = b""
        for _ in range(MAX_FRAMES):
            head = reader.take(9)
            length = int.from_bytes(head[:3], "big")
            kind, flags = head[3], head[4]
            stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            payload = reader.take(length)
            if kind == SETTINGS and not flags & ACK:
                sock.sendall(_frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                sock.sendall(_frame(PING, ACK, 0, payload))
            elif kind == GOAWAY:
                raise ProbeError("the server refused the connection (GOAWAY)")
            elif stream == STREAM and kind == RST_STREAM:
                raise ProbeError("the server reset the request")
            elif stream == STREAM and kind == DATA:
                if flags & PADDED:
                    payload = payload[1 : len(payload) - payload[0]]
                data += payload
            if stream == STREAM and kind in (DATA, HEADERS) and flags & END_STREAM:
                break
        else:
            raise ProbeError(f"no complete answer within {MAX_FRAMES} frames")
    if len(data) < 5:
        # A trailers-only answer: the service is unknown to the server, or the call failed.
        raise ProbeError(
            f"no health status for service {service!r} (unknown service or failed call)"
        )
    size = struct.unpack(">I", data[1:5])[0]
    return status_of(data[5 : 5 + size])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jac_splice.probe",
        description="Exit 0 if a gRPC server's health is SERVING.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--service", default="", help='health service name ("": the whole server)')
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds for the whole check")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    where = f"{args.host}:{args.port}"
    try:
        status = check(args.host, args.port, args.service, args.timeout)
    except socket.timeout:
        sys.stderr.write(f"jac-splice probe: {where} did not answer within {args.timeout}s\n")
        return 1
    except (OSError, ProbeError) as e:
        sys.stderr.write(f"jac-splice probe: {where}: {e}\n")
        return 1
    if status != SERVING:
        name = STATUS_NAMES.get(status, str(status))
        sys.stderr.write(f"jac-splice probe: {where} reports {name} for service {args.service!r}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
