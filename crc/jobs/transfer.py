"""Moving blobs between machines: pulled in windows; small ones cached by relays.

The machine that needs a blob (the *requester*) sends WANT frames towards the
machine that holds it (the *holder*), each asking for one chunk; it keeps a
window of chunks in flight (``WINDOW`` at first; then the chunk and the
window follow the path's rate and round trip, ``_paced``). DATA frames are
bulk, so chat on the same links overtakes them in every send queue; what it
cannot overtake is what already sits in socket buffers, and that is bounded
by the window: no more of this transfer lies anywhere between holder and
requester (docs/performance.md, "Jobs" and "Data plane", has the figures).

Small blobs (up to ``RELAY_CACHE_MAX``: sources, headers, objects) are cached
by every mesh server on the way: a WANT passing through is not forwarded but
answered — from the server's store if it has the blob, otherwise by fetching
the blob itself (one fetch, however many requesters) and answering each
requested chunk as soon as it has arrived. So such a file crosses each link
once, even when many servers ask for it at the same moment (the headers every
compile of a C project needs).

Larger blobs pass relays untouched (cut-through): WANTs and DATA are routed
like any extension frame, received in place and sent on without a copy
(``Decoder.receive_buffer``, ``Connection.send_bulk``), so a relay costs a
large file two socket copies instead of a write, a hash and a read. Only the
requester stores and verifies it. Two servers wanting the same large file at
once each pull their own copy.

Frames come in through its methods and go out through the ``send`` it is
given: no sockets, no routing table, no timers. Shared by the server's job
service and the client's job engine; imports neither.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

from ..net.heap import keep_chunk_buffers
from ..protocol import Extension
from .store import BlobStore, StoreError, valid_sha
from .wire import Kind, frame

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024          # the largest chunk asked for by one WANT
MIN_CHUNK = 8 * 1024         # the smallest (on a slow path: 1.3 ms at 50 Mbit/s)
FIRST_CHUNK = 64 * 1024      # before the path's rate is known
WINDOW = 3                   # chunks in flight at first (then: the path's rate x its delay)
MAX_WINDOW = 64              # ... and at most
#: A chunk takes about this long to cross one link: a chat that finds one
#: being sent on each link it crosses waits about that long per link.
CHUNK_TIME = 0.002
#: Bytes in flight: the path's rate times its shortest round trip (what keeps
#: it busy) plus this long of it (what may wait in its queues, and lets the
#: window find more speed while round trips stay short) — up to twice as
#: long on a fast path (``queue_time``).
QUEUE_TIME = 0.002
#: At this rate and above the allowance is doubled: there the relays' turns
#: on a busy CPU, not the link, make round trips vary, and what waits sits
#: mostly in their queues, where a chat passes it; on a slow path it sits in
#: the link's own queue, ahead of any chat.
FAST_RATE = 100e6
#: Above this rate (faster than any 1 Gbit/s link) a chunk grows from
#: ``CHUNK_TIME`` of the rate to three times that at twice this rate (1 MiB
#: from about 250 MB/s): such a path is limited by the relays' CPU, which
#: pays for every chunk, more than by the time a chunk spends on a link (a
#: megabyte crosses a 10 Gbit/s link in under a millisecond). Relays then
#: spend about half the CPU on a file (docs/performance.md). Over the same
#: span the queue allowance shrinks to nothing (``queue_time``): what waits
#: there sits in the socket buffers between relays sharing CPUs, ahead of
#: any chat crossing them (megabyte chunks made a chat's round trip on
#: loopback 10-20 ms with 4 ms of allowance, 3-4 ms without), and keeping
#: more in flight bought no speed (windows of 3 to 16 chunks alike).
FASTEST_RATE = 150e6
#: Until its rate stops growing, a fetch is starting (the way TCP's slow
#: start and BBR's startup begin): it keeps ``STARTUP_GAIN`` times what the
#: rate measured so far needs in flight (the rate times the shortest round
#: trip), and measures the rate every two round trips (at least
#: ``STARTUP_RATE_TIME``) instead of every ``RATE_TIME``. While the window is
#: what holds it back, the rate then doubles with each measurement: full
#: speed on a fast path within a few round trips, where growing only by the
#: queue allowance took a tenth of a second, half a 100 MiB file on
#: loopback. It stops after ``STARTUP_FLAT`` measurements in a row grew the
#: rate by less than ``STARTUP_GROWTH`` (the path is full), then drains what
#: it queued (``PROBE_EVERY``'s drain) and paces as below. Meanwhile chunk
#: size changes do not drain the path: one drain at the end.
STARTUP_GAIN = 2.0
STARTUP_GROWTH = 1.25
STARTUP_FLAT = 3
STARTUP_RATE_TIME = 0.004
#: The shortest round trip is learnt again this often, and whenever the chunk
#: size changes, by letting the path drain: one chunk alone in flight (a
#: round trip measured behind a standing queue would keep that queue for
#: good, and every chat crossing the path would wait behind it).
PROBE_EVERY = 2.0
#: The arrival rate is measured over at least this long (shorter, a relay's
#: bursts read as speed the path does not have).
RATE_TIME = 0.02
MAX_CHUNK = 1024 * 1024      # the largest WANT answered (peers may ask for more than CHUNK)
#: What holders of earlier versions answer at most: a WANT for more gets a
#: MISSING "malformed request", after which a fetch asks that holder for
#: chunks of this size (``Transfers.on_missing``).
LEGACY_CHUNK = 256 * 1024
MALFORMED = "malformed request"
RELAY_CACHE_MAX = 8 * 1024 * 1024   # larger blobs pass relays untouched (cut-through)
MIN_DEFLATE = 512            # smaller chunks are sent as they are
LOG_PACING = 8 * 1024 * 1024  # fetches this large log how they were paced

Send = Callable[[Extension], bool]
Done = Callable[[str, "str | None"], None]     # (sha, error or None)
Read = Callable[[str, int, int], "bytes | memoryview | None"]
Chunk = tuple[int, "bytes | memoryview"]        # (offset, data) just received


@dataclass
class _Fetch:
    sha: str
    size: int
    holder: int
    waiters: list[Done] = field(default_factory=list)
    wants: list[tuple[int, int, int]] = field(default_factory=list)  # requester, offset, length
    next_offset: int = 0
    in_flight: int = 0
    # Pacing (``Transfers._paced``): the chunk size and the window follow
    # the rate data arrives at and the shortest round trip of a chunk.
    chunk: int = FIRST_CHUNK
    cap: int = CHUNK                         # the largest chunk its holder answers
    big_from: int = -1                       # offset of the first WANT over LEGACY_CHUNK
    refusals_due: int = 0                    # of requests over it, already asked again
    window: int = WINDOW
    sent_at: dict[int, float] = field(default_factory=dict)   # offset -> WANT sent
    min_rtt: float = 0.0
    mark: tuple[float, int] = (0.0, 0)       # (time, bytes received then)
    received: int = 0
    rate: float = 0.0                        # best recent bytes per second
    probing: bool = False                    # draining: one chunk in flight
    probe: int = -1                          # offset of the chunk sent into the drained path
    next_probe: float = 0.0
    started: float = 0.0
    starting: bool = True                    # in startup (``STARTUP_GAIN``)
    flat: int = 0                            # rate measurements since it last grew enough


def queue_time(rate: float) -> float:
    """How long of the path's rate a fetch keeps waiting in queues:
    ``QUEUE_TIME``, growing to twice that at ``FAST_RATE``; above
    ``FASTEST_RATE`` shrinking again, without a step, to nothing at twice
    that rate."""
    allowance = QUEUE_TIME * (1.0 + min(1.0, rate / FAST_RATE))
    return allowance * (1.0 - min(1.0, max(0.0, rate / FASTEST_RATE - 1.0)))


def chunk_time(rate: float) -> float:
    """How long of the path's rate one chunk is: ``CHUNK_TIME`` up to
    ``FASTEST_RATE``, growing to three times that at twice the rate (no step:
    a rate near it must not flip the chunk size)."""
    return CHUNK_TIME * (1.0 + 2.0 * min(1.0, max(0.0, rate / FASTEST_RATE - 1.0)))


def _request(header: dict, max_chunk: int = MAX_CHUNK) -> tuple[str, int, int, int] | None:
    """(sha, offset, length, size) of a well-formed WANT, else None."""
    sha, offset, length = header.get("sha"), header.get("offset"), header.get("length")
    size = header.get("size", -1)
    if not (valid_sha(sha) and isinstance(offset, int) and isinstance(length, int)
            and isinstance(size, int)):
        return None
    if offset < 0 or not 0 < length <= max_chunk:
        return None
    return sha, offset, length, size


def cached_by_relays(size: int) -> bool:
    """Whether relays answer WANTs for a blob of ``size`` bytes themselves."""
    return 0 <= size <= RELAY_CACHE_MAX


class Transfers:
    def __init__(self, me: int, store: BlobStore, send: Send,
                 clock: Callable[[], float] = time.monotonic,
                 known: Callable[[int], bool] | None = None) -> None:
        self.me = me
        self.clock = clock
        #: Whether a machine is on the mesh (a server's routing table): a
        #: relay's fetch from one that is not is dead, whatever it missed.
        self.known = known
        self.store = store
        self.send = send
        self.fetches: dict[str, _Fetch] = {}
        self.bytes_served = 0
        self.bytes_fetched = 0
        self._incompressible: set[str] = set()
        #: The largest WANT answered here (a test plays an earlier version with less).
        self.max_chunk = MAX_CHUNK
        #: Holders found to answer at most ``LEGACY_CHUNK``.
        self._small_chunks: set[int] = set()

    def __repr__(self) -> str:
        return f"<Transfers of {self.me}: {len(self.fetches)} fetching>"

    # -- requesting ------------------------------------------------------------

    def fetch(self, sha: str, size: int, holder: int, done: Done | None) -> None:
        """Make ``sha`` local (from ``holder``); ``done(sha, error)`` when settled."""
        if self.store.has(sha):
            if done is not None:
                done(sha, None)
            return
        existing = self.fetches.get(sha)
        if existing is not None:
            if done is not None:
                existing.waiters.append(done)
            return
        try:
            self.store.abandon(sha)
            self.store.begin(sha, size)
        except StoreError as exc:
            if done is not None:
                done(sha, str(exc))
            return
        fetch = _Fetch(sha, size, holder, [done] if done is not None else [],
                       started=self.clock())
        if holder in self._small_chunks:
            fetch.cap = LEGACY_CHUNK
        self.fetches[sha] = fetch
        if size == 0:
            self._finish(fetch)
        else:
            self._request_more(fetch)

    def _request_more(self, fetch: _Fetch) -> None:
        now = self.clock()
        limit = 1 if fetch.probing else fetch.window
        while fetch.in_flight < limit and fetch.next_offset < fetch.size:
            length = min(fetch.chunk, fetch.size - fetch.next_offset)
            if length > LEGACY_CHUNK and fetch.big_from < 0:
                fetch.big_from = fetch.next_offset
                keep_chunk_buffers()            # (once per process)
            if fetch.probing and fetch.probe < 0:
                fetch.probe = fetch.next_offset     # the first chunk into an empty path
            self.send(frame(Kind.WANT, self.me, fetch.holder,
                            {"sha": fetch.sha, "offset": fetch.next_offset, "length": length,
                             "size": fetch.size}))
            fetch.sent_at[fetch.next_offset] = now
            fetch.next_offset += length
            fetch.in_flight += 1

    def _paced(self, fetch: _Fetch, offset: int, length: int) -> None:
        """A chunk arrived: learn the path's rate and round trip, and size the
        next chunks (``CHUNK_TIME`` of the rate) and the window (rate x
        (shortest round trip + ``queue_time``)) from them: full speed on a
        fast path, little queued anywhere on a slow one. The shortest round
        trip is taken with the path drained (``PROBE_EVERY``). Starting, the
        window is twice what the rate needs, the rate measured more often
        (``STARTUP_GAIN``)."""
        now = self.clock()
        fetch.received += length
        sent = fetch.sent_at.pop(offset, None)
        rtt = now - sent if sent is not None and length == fetch.chunk else 0.0
        if offset == fetch.probe:
            fetch.probing, fetch.probe = False, -1
            # (Each drain costs about two round trips: on a long path, rarer.)
            fetch.next_probe = now + max(PROBE_EVERY, 50 * rtt)
            if rtt > 0:
                fetch.min_rtt = rtt             # the path's own, nothing queued
                self._size_window(fetch)
        elif rtt > 0 and (fetch.min_rtt <= 0 or rtt < fetch.min_rtt):
            fetch.min_rtt = rtt
        start, before = fetch.mark
        if start <= 0:
            fetch.mark = (now, fetch.received)
            return
        elapsed = now - start
        if fetch.starting:
            if elapsed < max(2 * fetch.min_rtt, STARTUP_RATE_TIME):
                return
        elif elapsed < max(fetch.min_rtt, RATE_TIME):
            return
        rate = (fetch.received - before) / elapsed
        fetch.mark = (now, fetch.received)
        if fetch.starting:
            fetch.flat = 0 if rate >= STARTUP_GROWTH * fetch.rate else fetch.flat + 1
            if fetch.flat >= STARTUP_FLAT:
                fetch.starting = False
                fetch.next_probe = now          # (drain what it queued meanwhile)
        fetch.rate = max(rate, fetch.rate * 0.9)
        chunk, span = MIN_CHUNK, fetch.rate * chunk_time(fetch.rate)
        while chunk * 2 <= min(fetch.cap, span):
            chunk *= 2
        if chunk < fetch.chunk and span >= 0.75 * fetch.chunk:
            chunk = fetch.chunk     # (smaller only when the rate clearly fell: each change drains)
        if chunk != fetch.chunk:
            fetch.chunk = chunk
            fetch.min_rtt = 0.0                 # (a round trip of other chunks)
            fetch.next_probe = now
        if not fetch.probing and not fetch.starting and now >= fetch.next_probe:
            fetch.probing, fetch.probe = True, -1
        self._size_window(fetch)

    @staticmethod
    def _size_window(fetch: _Fetch) -> None:
        if fetch.starting:
            if fetch.min_rtt > 0:
                in_flight = STARTUP_GAIN * fetch.rate * fetch.min_rtt
                fetch.window = max(2, min(MAX_WINDOW, int(in_flight / fetch.chunk) + 1))
        elif fetch.min_rtt > 0:
            # In flight: the path's own round trip of the rate, plus a few
            # milliseconds of it waiting in queues (a delay-based window:
            # when chunks take longer than that, the window stops growing).
            in_flight = fetch.rate * (fetch.min_rtt + queue_time(fetch.rate))
            fetch.window = max(2, min(MAX_WINDOW, int(in_flight / fetch.chunk) + 1))

    def on_data(self, header: dict, body: bytes | memoryview) -> None:
        sha = header.get("sha")
        fetch = self.fetches.get(sha) if isinstance(sha, str) else None
        if fetch is None:
            return
        partial = self.store.partials.get(fetch.sha)
        try:
            if partial is None:
                raise StoreError("transfer state lost")
            if "z" in header:
                body = _inflate(body, header["z"])
            offset = int(header.get("offset", -1))
            partial.write(offset, body)
        except (StoreError, ValueError, TypeError) as exc:
            self._fail(fetch, str(exc))
            return
        self.bytes_fetched += len(body)
        fetch.in_flight -= 1
        self._paced(fetch, offset, len(body))
        # Requests for exactly this chunk (the usual case on a relay) are
        # answered from memory rather than read back from the file.
        chunk = (offset, body)
        if partial.complete:
            self._finish(fetch, chunk)
        else:
            self._answer_wants(fetch, partial.received, chunk)
            self._request_more(fetch)

    def on_missing(self, header: dict) -> None:
        fetch = self.fetches.get(header.get("sha", ""))
        if fetch is None:
            return
        error = header.get("error")
        if error == MALFORMED and fetch.big_from >= 0:
            self._ask_less(fetch)
        elif error == MALFORMED and fetch.refusals_due > 0:
            fetch.refusals_due -= 1         # another request over what it answers, asked again
        else:
            self._fail(fetch, str(error or "not available on the machine that should hold it"))

    def _ask_less(self, fetch: _Fetch) -> None:
        """The holder refused a chunk over ``LEGACY_CHUNK`` (an earlier
        version): ask again for everything from the first such request on,
        in chunks it answers, and ask it for no more from now on. What it
        answered before that arrives as it would have."""
        log.info("transfer of %s: %d answers chunks of at most %d bytes; asking for those",
                 fetch.sha[:12], fetch.holder, LEGACY_CHUNK)
        if len(self._small_chunks) >= 4096:
            self._small_chunks.clear()
        self._small_chunks.add(fetch.holder)
        refused = [offset for offset in fetch.sent_at if offset >= fetch.big_from]
        for offset in refused:
            del fetch.sent_at[offset]
        fetch.in_flight -= len(refused)
        fetch.refusals_due = len(refused) - 1
        fetch.next_offset, fetch.big_from = fetch.big_from, -1
        fetch.cap = LEGACY_CHUNK
        fetch.chunk = min(fetch.chunk, LEGACY_CHUNK)
        if fetch.probe >= fetch.next_offset:
            fetch.probing, fetch.probe = False, -1
        self._request_more(fetch)

    def reset(self, error: str) -> None:
        """Fail every fetch in progress (the connection they used is gone)."""
        for fetch in list(self.fetches.values()):
            self._fail(fetch, error)

    def holder_lost(self, holder: int) -> None:
        for fetch in [f for f in self.fetches.values() if f.holder == holder]:
            self._fail(fetch, "the machine holding it left the mesh")

    def _finish(self, fetch: _Fetch, chunk: Chunk | None = None) -> None:
        partial = self.store.partials.get(fetch.sha)
        try:
            if partial is None:
                raise StoreError("transfer state lost")
            self.store.commit(partial)
        except StoreError as exc:
            self._fail(fetch, str(exc))
            return
        del self.fetches[fetch.sha]
        if fetch.size >= LOG_PACING:
            took = max(self.clock() - fetch.started, 1e-6)
            log.info("fetched %s (%d bytes) from %d in %.2f s, %.2f MB/s: chunk %d, "
                     "window %d, shortest round trip %.1f ms, rate %.2f MB/s",
                     fetch.sha[:12], fetch.size, fetch.holder, took, fetch.size / took / 1e6,
                     fetch.chunk, fetch.window, fetch.min_rtt * 1e3, fetch.rate / 1e6)
        self._answer_wants(fetch, fetch.size, chunk)
        for done in fetch.waiters:
            done(fetch.sha, None)

    def _fail(self, fetch: _Fetch, error: str, spare: int | None = None) -> None:
        """End ``fetch``: whoever waits on it hears ``error`` — but not
        ``spare``, whose newer request (from another holder) goes on."""
        self.fetches.pop(fetch.sha, None)
        self.store.abandon(fetch.sha)
        for requester, _offset, _length in fetch.wants:
            if requester != spare:
                self.missing(requester, fetch.sha, error)
        for done in fetch.waiters:
            done(fetch.sha, error)

    # -- answering -----------------------------------------------------------------

    def want(self, requester: int, holder: int, header: dict) -> None:
        """A WANT from ``requester`` addressed to ``holder`` reached us (a server):
        answer it from the store, from a fetch in progress, or by fetching."""
        request = _request(header, self.max_chunk)
        if request is None:
            self.missing(requester, str(header.get("sha"))[:64], MALFORMED)
            return
        sha, offset, length, size = request
        if self.store.has(sha):
            self._send_chunk(requester, sha, offset, length, self.store.size(sha), self.store.read)
            return
        fetch = self.fetches.get(sha)
        if fetch is not None and fetch.holder != holder and self.known is not None \
                and not self.known(fetch.holder):
            # A fetch from a machine that left without our hearing of it
            # (gone while we rejoined the mesh): it will never complete. The
            # WANT names a holder that is here: start again from that one.
            log.info("transfer of %s: its holder %d is gone; fetching from %d instead",
                     sha[:12], fetch.holder, holder)
            self._fail(fetch, "the machine holding it left the mesh", spare=requester)
            fetch = None
        if fetch is None:
            if holder == self.me or size < 0:
                self.missing(requester, sha)
                return
            self.fetch(sha, size, holder, None)
            fetch = self.fetches.get(sha)
            if fetch is None:                      # settled at once (empty, or refused)
                if self.store.has(sha):
                    self._send_chunk(requester, sha, offset, length, size, self.store.read)
                else:
                    self.missing(requester, sha, "cannot be stored here")
                return
        fetch.wants.append((requester, offset, length))
        partial = self.store.partials.get(sha)
        self._answer_wants(fetch, partial.received if partial else 0)

    def _answer_wants(self, fetch: _Fetch, received: int, chunk: Chunk | None = None) -> None:
        ready = [w for w in fetch.wants if w[1] + w[2] <= received]
        if not ready:
            return
        fetch.wants = [w for w in fetch.wants if w[1] + w[2] > received]
        partial = self.store.partials.get(fetch.sha)
        read: Read = self.store.read if partial is None else _reader(partial.path)
        if chunk is not None:
            read = _preferring(chunk, read)
        for requester, offset, length in ready:
            self._send_chunk(requester, fetch.sha, offset, length, fetch.size, read)

    def serve(self, requester: int, header: dict, read: Read, size: int) -> bool:
        """Answer a WANT from outside the store (a client's own files)."""
        request = _request(header, self.max_chunk)
        if request is None:
            return False
        sha, offset, length, _ = request
        return self._send_chunk(requester, sha, offset, length, size, read)

    def _send_chunk(self, requester: int, sha: str, offset: int, length: int, size: int,
                    read: Read) -> bool:
        try:
            data = read(sha, offset, length)
        except OSError as exc:
            log.warning("cannot read blob %s: %s", sha[:12], exc)
            data = None
        if data is None:
            self.missing(requester, sha, "unreadable")
            return False
        self.bytes_served += len(data)
        if length > LEGACY_CHUNK:
            keep_chunk_buffers()                # (once per process)
        header = {"sha": sha, "offset": offset, "size": size}
        body = self._maybe_deflate(sha, data, header)
        self.send(frame(Kind.DATA, self.me, requester, header, body, bulk=True))
        return True

    def _maybe_deflate(self, sha: str, data: bytes | memoryview, header: dict) -> bytes | memoryview:
        """Compress a chunk when that pays (sources and objects shrink ~3x);
        one chunk that does not shrink marks its blob as not worth trying."""
        if len(data) < MIN_DEFLATE or sha in self._incompressible:
            return data
        packed = zlib.compress(data, 1)
        if len(packed) > len(data) * 0.9:
            if len(self._incompressible) > 4096:
                self._incompressible.clear()
            self._incompressible.add(sha)
            return data
        header["z"] = len(data)
        return packed

    def missing(self, requester: int, sha: str, error: str = "") -> None:
        header = {"sha": sha}
        if error:
            header["error"] = error
        self.send(frame(Kind.MISSING, self.me, requester, header))


def _inflate(body: bytes | memoryview, length: object) -> bytes:
    """Undo ``_maybe_deflate``; ``StoreError`` unless exactly ``length`` bytes come out."""
    if not isinstance(length, int) or not 0 < length <= MAX_CHUNK:
        raise StoreError(f"compressed chunk claims {length!r} bytes")
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(body, length)
    except zlib.error as exc:
        raise StoreError(f"corrupt compressed chunk: {exc}") from None
    if len(data) != length or inflater.unconsumed_tail:
        raise StoreError("compressed chunk does not match its stated length")
    return data


def _reader(path) -> Read:
    def read(sha: str, offset: int, length: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)
    return read


def _preferring(chunk: Chunk, read: Read) -> Read:
    """``read``, except that a request for exactly ``chunk`` is served from memory."""
    start, data = chunk

    def read_chunk(sha: str, offset: int, length: int) -> bytes | memoryview | None:
        if offset == start and length == len(data):
            return data
        return read(sha, offset, length)
    return read_chunk
