"""A small TCP proxy for fault tests and benchmarks: forwards 127.0.0.1:<port> to a server, and can
cut every connection after N client->server bytes (a link dropping mid-upload), throttle that
direction (so an upload lasts long enough to kill the uploading process half-way), or add latency
both ways (a LAN/WiFi-like round trip, for bench/deploy.py)."""
from __future__ import annotations

import queue
import socket
import threading
import time
from typing import List, Optional, Tuple


class TcpProxy:
    def __init__(self, target: Tuple[str, int], *, cut_after: Optional[int] = None,
                 rate: Optional[float] = None, delay: float = 0.0) -> None:
        self.target = target
        self.cut_after = cut_after
        """Close both sides once this many bytes went client -> server (per connection)."""
        self.rate = rate
        """Bytes per second client -> server (None: as fast as it goes)."""
        self.delay = delay
        """Seconds added to every chunk, each way (the round trip grows by twice this)."""
        self.cuts = 0
        self.upstream_bytes = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._socks: List[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="tcp-proxy")
        self._thread.start()

    @property
    def address(self) -> Tuple[str, int]:
        return ("127.0.0.1", self.port)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socks += [client, server]
            state = {"sent": 0}
            threading.Thread(target=self._pump, args=(client, server, state, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, state, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict, upstream: bool) -> None:
        if self.delay:
            dst = _Delayed(dst, self.delay)  # type: ignore[assignment]
        try:
            while True:
                data = src.recv(16384 if self.rate is None else max(1, min(16384, int(self.rate / 20))))
                if not data:
                    break
                if upstream:
                    if self.cut_after is not None and state["sent"] + len(data) > self.cut_after:
                        dst.sendall(data[: max(0, self.cut_after - state["sent"])])
                        self.cuts += 1
                        break
                    state["sent"] += len(data)
                    self.upstream_bytes += len(data)
                    if self.rate:
                        time.sleep(len(data) / self.rate)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # Drop the whole connection, both ways, like a link going down.
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Delayed:
    """Sends each chunk ``delay`` seconds after it arrived, in order, without limiting throughput."""

    def __init__(self, sock: socket.socket, delay: float) -> None:
        self.sock, self.delay = sock, delay
        self.q: "queue.Queue[Optional[Tuple[float, bytes]]]" = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                break
            due, data = item
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                self.sock.sendall(data)
            except OSError:
                break
        self.sock.close()

    def sendall(self, data: bytes) -> None:
        self.q.put((time.monotonic() + self.delay, data))

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        self.q.put(None)


def main() -> None:
    """``python tests/tcp_proxy.py [--delay S] HOST:PORT...``: one proxy per target, in a process of
    its own (so its threads do not share a GIL with what is being measured). Prints the listening
    ports, one per line, then serves until killed."""
    import argparse
    import sys

    ap = argparse.ArgumentParser()
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("targets", nargs="+")
    args = ap.parse_args()
    proxies = [TcpProxy((t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])), delay=args.delay) for t in args.targets]
    for p in proxies:
        print(p.port)
    sys.stdout.flush()
    threading.Event().wait()


if __name__ == "__main__":
    main()
