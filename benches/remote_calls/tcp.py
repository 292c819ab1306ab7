"""Raw TCP reference processes for the benchmark (no framing beyond a fixed message size).

python tcp.py echo SIZE      -- reads SIZE bytes, sends them back, again and again
python tcp.py relay PORT     -- forwards bytes both ways between each client and 127.0.0.1:PORT

Each prints ``ready PORT`` once listening. The echo server is the floor of any request/response
(ping-pong with a tiny SIZE; a bulk round trip with a large one); the relay, a third process in
the path, is the ceiling of any proxied path.
"""

from __future__ import annotations

import socket
import sys
import threading


def echo(size: int) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    print("ready", server.getsockname()[1], flush=True)
    while True:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve_echo, args=(conn, size), daemon=True).start()


def serve_echo(conn: socket.socket, size: int) -> None:
    buf = bytearray(size)
    view = memoryview(buf)
    with conn:
        while True:
            got = 0
            while got < size:
                k = conn.recv_into(view[got:])
                if not k:
                    return
                got += k
            conn.sendall(view)


def relay(port: int) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    print("ready", server.getsockname()[1], flush=True)
    while True:
        client, _ = server.accept()
        upstream = socket.create_connection(("127.0.0.1", port))
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()


def pump(src: socket.socket, dst: socket.socket) -> None:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while True:
        k = src.recv_into(view)
        if not k:
            dst.shutdown(socket.SHUT_WR)
            return
        dst.sendall(view[:k])


if __name__ == "__main__":
    mode, value = sys.argv[1], int(sys.argv[2])
    echo(value) if mode == "echo" else relay(value)
