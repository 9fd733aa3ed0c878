"""Moving blobs between machines: pull, in windows, through the tree.

The machine that needs a blob (the *requester*) sends WANT frames towards the
machine that holds it (the *holder*), each asking for one chunk; it keeps
``WINDOW`` chunks in flight, so a large file streams at link speed while the
link's queue never holds more than a window of it — and, since DATA frames
are bulk, chat on the same links overtakes them.

Servers between the two also take part (``relay_want`` / ``relay_data``): a
WANT for a blob a relay already holds is answered by the relay, and DATA
passing through in order is kept, so shared files (the headers of a C
project) cross each link about once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from ..protocol import Extension
from .store import BlobStore, StoreError, valid_sha
from .wire import Kind, frame

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
WINDOW = 8

Send = Callable[[Extension], bool]
Done = Callable[[str, "str | None"], None]     # (sha, error or None)


@dataclass
class _Fetch:
    sha: str
    size: int
    holder: int
    waiters: list[Done] = field(default_factory=list)
    next_offset: int = 0
    in_flight: int = 0


class Transfers:
    def __init__(self, me: int, store: BlobStore, send: Send) -> None:
        self.me = me
        self.store = store
        self.send = send
        self.fetches: dict[str, _Fetch] = {}
        self.bytes_served = 0
        self.bytes_fetched = 0

    # -- requesting ------------------------------------------------------------

    def fetch(self, sha: str, size: int, holder: int, done: Done) -> None:
        """Make ``sha`` local (from ``holder``); ``done(sha, error)`` when settled."""
        if self.store.has(sha):
            done(sha, None)
            return
        existing = self.fetches.get(sha)
        if existing is not None:
            existing.waiters.append(done)
            return
        try:
            partial = self.store.begin(sha, size)
        except StoreError as exc:
            done(sha, str(exc))
            return
        if partial.received:          # a relay copy was half-made: start over
            self.store.abandon(sha)
            partial = self.store.begin(sha, size)
        fetch = _Fetch(sha, size, holder, [done])
        self.fetches[sha] = fetch
        if size == 0:
            self._finish(fetch)
            return
        self._request_more(fetch)

    def _request_more(self, fetch: _Fetch) -> None:
        while fetch.in_flight < WINDOW and fetch.next_offset < fetch.size:
            length = min(CHUNK, fetch.size - fetch.next_offset)
            self.send(frame(Kind.WANT, self.me, fetch.holder,
                            {"sha": fetch.sha, "offset": fetch.next_offset, "length": length}))
            fetch.next_offset += length
            fetch.in_flight += 1

    def on_data(self, header: dict, body: bytes) -> None:
        sha = header.get("sha")
        fetch = self.fetches.get(sha) if isinstance(sha, str) else None
        if fetch is None:
            return
        partial = self.store.partials.get(fetch.sha)
        try:
            if partial is None:
                raise StoreError("transfer state lost")
            partial.write(int(header.get("offset", -1)), body)
        except (StoreError, ValueError, TypeError) as exc:
            self._fail(fetch, str(exc))
            return
        self.bytes_fetched += len(body)
        fetch.in_flight -= 1
        if partial.complete:
            self._finish(fetch)
        else:
            self._request_more(fetch)

    def on_missing(self, header: dict) -> None:
        fetch = self.fetches.get(header.get("sha", ""))
        if fetch is not None:
            self._fail(fetch, f"{header.get('name') or fetch.sha[:12]} is not available on "
                              f"the machine that should hold it")

    def holder_lost(self, holder: int) -> None:
        for fetch in [f for f in self.fetches.values() if f.holder == holder]:
            self._fail(fetch, f"the machine holding blob {fetch.sha[:12]} left the mesh")

    def _finish(self, fetch: _Fetch) -> None:
        partial = self.store.partials.get(fetch.sha)
        try:
            if partial is None:
                raise StoreError("transfer state lost")
            self.store.commit(partial)
        except StoreError as exc:
            self._fail(fetch, str(exc))
            return
        del self.fetches[fetch.sha]
        for done in fetch.waiters:
            done(fetch.sha, None)

    def _fail(self, fetch: _Fetch, error: str) -> None:
        self.fetches.pop(fetch.sha, None)
        self.store.abandon(fetch.sha)
        for done in fetch.waiters:
            done(fetch.sha, error)

    # -- holding -----------------------------------------------------------------

    def serve(self, requester: int, header: dict,
              read: Callable[[str, int, int], bytes] | None = None, size: int = 0) -> bool:
        """Answer a WANT from our store (or from ``read``, for a blob of ``size``
        bytes that lives outside the store); False if we lack the blob."""
        sha, offset, length = header.get("sha"), header.get("offset"), header.get("length")
        if not (valid_sha(sha) and isinstance(offset, int) and isinstance(length, int)) \
                or offset < 0 or not 0 < length <= CHUNK:
            self.send(frame(Kind.MISSING, self.me, requester, {"sha": str(sha)[:64],
                                                                "error": "malformed request"}))
            return True
        if read is None:
            if not self.store.has(sha):
                return False
            read = self.store.read
            size = self.store.size(sha)
        try:
            data = read(sha, offset, length)
        except OSError as exc:
            log.warning("cannot read blob %s: %s", sha[:12], exc)
            data = None
        if data is None:
            return False
        self.bytes_served += len(data)
        self.send(frame(Kind.DATA, self.me, requester, {"sha": sha, "offset": offset, "size": size},
                        data, bulk=True))
        return True

    def missing(self, requester: int, sha: str) -> None:
        self.send(frame(Kind.MISSING, self.me, requester, {"sha": sha}))

    # -- relaying (servers between requester and holder) ----------------------------

    def relay_data(self, header: dict, body: bytes) -> None:
        """Keep an in-order copy of a blob passing through."""
        sha, offset, total = header.get("sha"), header.get("offset"), header.get("size")
        if not valid_sha(sha) or not isinstance(offset, int) or not isinstance(total, int) \
                or self.store.has(sha) or sha in self.fetches:
            return
        try:
            partial = self.store.partials.get(sha)
            if partial is None:
                if offset != 0:
                    return
                partial = self.store.begin(sha, total)
            partial.write(offset, body)
            if partial.complete:
                self.store.commit(partial)
        except StoreError:
            self.store.abandon(sha)
