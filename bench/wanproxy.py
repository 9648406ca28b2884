"""A TCP proxy that adds one-way delay (with a little jitter) in both directions, for the WAN
benchmark (``bench/wan.py``). This kernel has no ``netem``: the bandwidth cap is ``tc tbf`` on
a veth pair into a network namespace, the latency is this proxy.

Each chunk read from one side is written to the other side ``delay +- jitter`` later; the
write times never go backwards, so the byte order is kept (jitter shows as small bursts,
not reordering). Data waiting for its time is held in memory up to ``--max-buffer`` bytes
per direction (then the proxy stops reading and TCP flow control pushes back on the
sender): at 1 Gbit/s a 40 ms one-way delay holds 5 MB in flight.

Blocking sockets, two threads per direction (one reads, one writes when due): the socket
calls release the GIL, and 1 MiB reads keep the Python work per byte small. An asyncio
version (streams) was measured first and carried ~75-90 MB/s on the busy 2-core machine
where this one carries ~110-150 MB/s (``bench.wan`` measures it on every link it runs).

    python -m bench.wanproxy --listen 10.213.0.1 --target 127.0.0.1:9000 --delay-ms 10 --jitter-ms 0.5

Prints one JSON line ``{"port": N}`` once listening, then serves until stdin closes (so the
benchmark that started it owns it).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import threading
import time
from collections import deque

READ_SIZE = 1024 * 1024


class Pipe:
    """One direction: ``src`` -> ``dst``, each chunk sent ``delay`` (+- ``jitter``) after it arrived."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay: float, jitter: float, max_buffer: int) -> None:
        self.src, self.dst, self.delay, self.jitter, self.max_buffer = src, dst, delay, jitter, max_buffer
        self.queue: deque[tuple[float, bytes]] = deque()
        self.buffered = 0
        self.eof = False
        self.last_due = 0.0
        self.cv = threading.Condition()

    def read_side(self) -> None:
        try:
            while True:
                try:
                    data = self.src.recv(READ_SIZE)
                except OSError:
                    data = b""
                if not data:
                    break
                due = time.monotonic() + self.delay + (random.uniform(-self.jitter, self.jitter) if self.jitter else 0.0)
                with self.cv:
                    self.last_due = due = max(due, self.last_due)  # never before an earlier chunk: order kept
                    self.queue.append((due, data))
                    self.buffered += len(data)
                    self.cv.notify_all()
                    while self.buffered >= self.max_buffer:
                        self.cv.wait()
        finally:
            with self.cv:
                self.eof = True
                self.cv.notify_all()

    def write_side(self) -> None:
        try:
            while True:
                with self.cv:
                    while not self.queue and not self.eof:
                        self.cv.wait()
                    if not self.queue:
                        break
                    due = self.queue[0][0]
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                with self.cv:  # everything due by now goes out in one write
                    now, parts = time.monotonic(), []
                    while self.queue and self.queue[0][0] <= now:
                        parts.append(self.queue.popleft()[1])
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                self.dst.sendall(data)
                with self.cv:
                    self.buffered -= len(data)
                    self.cv.notify_all()
            try:
                self.dst.shutdown(socket.SHUT_WR)  # pass the half-close on
            except OSError:
                pass
        except OSError:  # one side reset: end both
            for s in (self.src, self.dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self.cv:
                self.buffered = 0
                self.cv.notify_all()


def _connection(client: socket.socket, target: tuple[str, int], delay: float, jitter: float, max_buffer: int) -> None:
    try:
        server = socket.create_connection(target)
    except OSError:
        client.close()
        return
    for s in (client, server):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the delay is ours, not Nagle's
    threads = []
    for src, dst in ((client, server), (server, client)):
        pipe = Pipe(src, dst, delay, jitter, max_buffer)
        threads += [threading.Thread(target=pipe.read_side, daemon=True), threading.Thread(target=pipe.write_side, daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--target", required=True, help="host:port to forward to")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay added in each direction")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="+- this much, uniformly (order kept)")
    parser.add_argument("--max-buffer", type=int, default=64 * 1024 * 1024, help="bytes held per direction before reading pauses")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    target = (host, int(port))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.listen, args.port))
    listener.listen(128)
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)

    def accept() -> None:
        while True:
            client, _ = listener.accept()
            threading.Thread(
                target=_connection, args=(client, target, args.delay_ms / 1000, args.jitter_ms / 1000, args.max_buffer), daemon=True
            ).start()

    threading.Thread(target=accept, daemon=True).start()
    sys.stdin.read()  # until the owner closes our stdin (or exits)


if __name__ == "__main__":
    main()
