"""A minimal byte forwarder on ``selectors``: the ceiling for the relay benchmark.

``python bench/forwarder.py --port P --to HOST:PORT`` listens on loopback port
``P``; every connection it accepts gets its own connection to ``HOST:PORT``
and bytes are copied both ways, unchanged, until either side closes. Nothing
is parsed, so a chain of these processes is what a relay chain of the same
length would cost if a server did nothing but move bytes: one process hop,
one ``recv`` and one ``send`` per batch.

Once listening it prints ``ready PORT`` on standard output (``--port 0``
picks a free port). It exits on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import selectors
import signal
import socket
import sys

RECV_SIZE = 256 * 1024


class Pipe:
    """One direction of a forwarded connection: bytes read from ``src`` go to ``dst``."""

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src = src
        self.dst = dst
        self.pending = bytearray()


class Forwarder:
    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.target = target
        self.sel = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        # Per socket: the pipe that reads from it and the pipe that writes to it.
        self.reader: dict[socket.socket, Pipe] = {}
        self.writer: dict[socket.socket, Pipe] = {}
        self.events: dict[socket.socket, int] = {}
        # One receive buffer for every pipe: what is read is copied out at once.
        self.buffer = memoryview(bytearray(RECV_SIZE))

    def accept(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(self.target)
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for pipe in (Pipe(client, upstream), Pipe(upstream, client)):
            self.reader[pipe.src] = pipe
            self.writer[pipe.dst] = pipe
            self.events[pipe.src] = selectors.EVENT_READ
            self.sel.register(pipe.src, selectors.EVENT_READ, None)

    def _interest(self, sock: socket.socket) -> None:
        # Reading from a socket pauses while what was read from it waits to be
        # written; writing is watched only while bytes wait.
        events = selectors.EVENT_WRITE if self.writer[sock].pending else 0
        if not self.reader[sock].pending:
            events |= selectors.EVENT_READ
        old = self.events[sock]
        if events == old:
            return
        if not events:                 # selectors cannot watch for nothing
            self.sel.unregister(sock)
        elif not old:
            self.sel.register(sock, events, None)
        else:
            self.sel.modify(sock, events, None)
        self.events[sock] = events

    def close(self, pipe: Pipe) -> None:
        for sock in (pipe.src, pipe.dst):
            if sock in self.reader:
                if self.events[sock]:
                    self.sel.unregister(sock)
                del self.reader[sock], self.writer[sock], self.events[sock]
                sock.close()

    def readable(self, sock: socket.socket) -> None:
        pipe = self.reader[sock]
        try:
            n = sock.recv_into(self.buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if not n:
            self.close(pipe)
            return
        pipe.pending += self.buffer[:n]
        self.flush(pipe)

    def flush(self, pipe: Pipe) -> None:
        try:
            sent = pipe.dst.send(pipe.pending)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close(pipe)
            return
        del pipe.pending[:sent]
        self._interest(pipe.src)
        self._interest(pipe.dst)

    def run(self) -> None:
        while True:
            # No timeout: a wait with one costs a kernel timer on every pass.
            for key, mask in self.sel.select():
                sock = key.fileobj
                if sock is self.listener:
                    self.accept()
                    continue
                if sock not in self.reader:
                    continue  # closed earlier in this pass
                if mask & selectors.EVENT_WRITE:
                    self.flush(self.writer[sock])
                if mask & selectors.EVENT_READ and sock in self.reader:
                    self.readable(sock)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--to", required=True, metavar="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.to.rpartition(":")
    fwd = Forwarder(args.port, (host, int(port)))

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"ready {fwd.port}", flush=True)
    fwd.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
