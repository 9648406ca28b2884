"""bench/wanproxy.py, the delaying TCP proxy of the WAN benchmark: it adds the one-way delay in
each direction, keeps the byte order with jitter, passes a half-close on, and carries a few
MiB intact (no root needed: on 127.0.0.1, without the namespace and tc)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _echo_server() -> tuple[socket.socket, int]:
    """Echoes every byte back; at EOF, half-closes too."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(1 << 16):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


@pytest.fixture
def proxy():
    listener, port = _echo_server()
    cmd = [sys.executable, "-m", "bench.wanproxy", "--listen", "127.0.0.1", "--target", f"127.0.0.1:{port}",
           "--delay-ms", "50", "--jitter-ms", "20"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        yield json.loads(proc.stdout.readline())["port"]
    finally:
        proc.stdin.close()  # it serves until its stdin closes
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        listener.close()


def test_a_round_trip_takes_twice_the_one_way_delay(proxy):
    with socket.create_connection(("127.0.0.1", proxy)) as c:
        for _ in range(3):
            started = time.monotonic()
            c.sendall(b"ping")
            assert c.recv(16) == b"ping"
            took = time.monotonic() - started
            assert 0.06 <= took < 1.0, took  # 2 x (50 +- 20) ms, plus scheduling


def test_bytes_arrive_intact_and_in_order_with_jitter_and_the_half_close_passes(proxy):
    data = os.urandom(4 * 1024 * 1024)
    received = bytearray()
    with socket.create_connection(("127.0.0.1", proxy)) as c:
        def read() -> None:
            while chunk := c.recv(1 << 16):
                received.extend(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        view, pos, step = memoryview(data), 0, 1
        while pos < len(data):  # pieces of varied sizes, each delayed with its own jitter
            c.sendall(view[pos : pos + step])
            pos += step
            step = step * 7 % 300_001 + 1
        c.shutdown(socket.SHUT_WR)  # the echo server sees EOF only if the proxy passes it on
        reader.join(timeout=30)
        assert not reader.is_alive(), "the half-close was not passed on"
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(data).hexdigest()
