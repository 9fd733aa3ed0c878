"""TLS for mesh and client links, inside the same non-blocking event loop.

Two halves:

* **Settings.** ``server_tls`` and ``client_tls`` build ``ssl.SSLContext``
  objects from the files named on the command line, checking each file on its
  own so that a mistake is reported as ``--tls-key FILE: ...`` at startup
  (``TLSConfigError``), never as a failed handshake later. A ``TLS`` value is
  what a ``Connection`` takes: a context, which end of the handshake we are,
  and the name the peer's certificate must carry.
* **``TLSConnection``.** What ``new_connection(..., tls=...)`` builds. The socket
  is wrapped once TCP is connected, and the handshake is driven by selector
  events (``do_handshake`` until it stops asking to read or write); until it
  is done the connection counts as still connecting, so what the owner sends
  waits in the usual queues. After it: reads fill the buffer from as many TLS
  records as are ready, and bytes OpenSSL has decrypted but not handed out
  (``pending()``, invisible to ``select``) are read before the pass ends.
  Writes go out through ``send`` (an ``SSLSocket`` has no ``sendmsg``): bulk
  parts are joined into chunks of at most ``SEND_SIZE``, and a chunk that
  OpenSSL could not finish is retried byte for byte, as it requires, before
  anything else — whether it asked to write or (a renegotiation, a key
  update) to read first.

A failed handshake — an untrusted certificate, a name that does not match, a
peer that does not speak TLS — closes that connection with a warning naming
the peer and the reason; nothing else is affected.

Nothing in ``TLSConnection`` blocks or reads a file: certificates and keys
are read only while the settings are built, at startup. What the bytes
mean (framing, messages) stays ``Connection``'s.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
from dataclasses import dataclass
from time import monotonic as _monotonic
from typing import Any

from .connection import SEND_SIZE, Connection
from .loop import EVENT_READ, EVENT_WRITE

log = logging.getLogger(__name__)

#: Seconds a client-side handshake (our uplink, a chat client) may take; the
#: accepting side is bounded by the server's registration timeout instead.
HANDSHAKE_TIMEOUT = 10.0


class TLSConfigError(ValueError):
    """A certificate, key or CA file that cannot be used; the text names it."""


@dataclass(frozen=True)
class TLS:
    """How one connection speaks TLS."""

    context: ssl.SSLContext
    server_side: bool = False
    #: Client side: the name (DNS name or IP address) the server's certificate
    #: must carry. ``towards(host)`` fills it in with the address dialled.
    server_hostname: str | None = None
    #: Close the connection if the handshake is not done by then (None: never).
    handshake_timeout: float | None = None

    def towards(self, host: str) -> "TLS":
        """These settings for a connection to ``host``: its certificate must name
        ``host``, unless a name was fixed (``--tls-server-name``)."""
        if self.server_side or self.server_hostname:
            return self
        return dataclasses.replace(self, server_hostname=host)


@dataclass(frozen=True)
class ServerTLS:
    """A server's TLS: for the connections it accepts and for its uplinks."""

    accept: TLS
    connect: TLS
    #: Every accepted peer, clients too, must present a certificate.
    require_client_cert: bool = False


# -- settings -----------------------------------------------------------------------------


def _read(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TLSConfigError(f"{flag} {path}: {exc.strerror or exc}") from None


def _check_certificate(path: str, flag: str) -> None:
    data = _read(path, flag)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSConfigError(f"{flag} {path}: no PEM certificate in it "
                             "(expected '-----BEGIN CERTIFICATE-----')")
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        scratch.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"{flag} {path}: not a usable PEM certificate "
                             f"({exc.reason or exc})") from None


def _no_passphrase() -> bytes:
    raise TLSConfigError("encrypted")


def _load_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    _check_certificate(cert, "--tls-cert")
    if b"PRIVATE KEY-----" not in _read(key, "--tls-key"):
        raise TLSConfigError(f"--tls-key {key}: no PEM private key in it "
                             "(expected '-----BEGIN ... PRIVATE KEY-----')")
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except TLSConfigError:
        raise TLSConfigError(f"--tls-key {key}: the key is encrypted with a passphrase; "
                             "give an unencrypted key (readable only by the server's user)"
                             ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(f"--tls-key {key} does not belong to the certificate in "
                                 f"--tls-cert {cert}") from None
        raise TLSConfigError(f"--tls-key {key}: not a usable private key for --tls-cert {cert} "
                             f"({exc.reason or exc})") from None
    except OSError as exc:
        raise TLSConfigError(f"--tls-cert {cert} / --tls-key {key}: {exc.strerror or exc}"
                             ) from None


def _load_ca(context: ssl.SSLContext, ca: str) -> None:
    _check_certificate(ca, "--tls-ca")
    try:
        context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"--tls-ca {ca}: {getattr(exc, 'reason', None) or exc}") from None


def _context(purpose: int) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Renegotiation is the one way a TLS 1.2 peer could make us read in order
    # to write for the life of a link; nothing here needs it.
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return context


def client_tls(ca: str, cert: str | None = None, key: str | None = None, *,
               server_name: str | None = None,
               handshake_timeout: float | None = HANDSHAKE_TIMEOUT) -> TLS:
    """Client-side TLS: the server's certificate must be signed by ``ca`` and
    carry the name dialled (or ``server_name``); with ``cert`` and ``key`` we
    present our own certificate when asked."""
    context = _context(ssl.PROTOCOL_TLS_CLIENT)     # CERT_REQUIRED, check_hostname
    _load_ca(context, ca)
    if cert or key:
        if not (cert and key):
            raise TLSConfigError("--tls-cert and --tls-key go together")
        _load_chain(context, cert, key)
    return TLS(context, server_side=False, server_hostname=server_name or None,
               handshake_timeout=handshake_timeout)


def server_tls(cert: str, key: str, ca: str, *, require_client_cert: bool = False,
               server_name: str | None = None,
               handshake_timeout: float | None = HANDSHAKE_TIMEOUT) -> ServerTLS:
    """A server's TLS: it proves itself with ``cert``/``key`` on both ends of
    its links and checks every peer certificate against ``ca``. Accepted peers
    are asked for a certificate; one that is offered must verify, and with
    ``require_client_cert`` one must be offered."""
    accept = _context(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(accept, cert, key)
    _load_ca(accept, ca)
    accept.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    accept.num_tickets = 0            # no session resumption: links are long-lived
    connect = client_tls(ca, cert, key, server_name=server_name,
                         handshake_timeout=handshake_timeout)
    return ServerTLS(accept=TLS(accept, server_side=True), connect=connect,
                     require_client_cert=require_client_cert)


# -- failures ---------------------------------------------------------------------------------

#: OpenSSL reasons, said plainly.
_REASONS = {
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS (plain CRC on a TLS port?)",
    "HTTP_REQUEST": "the peer does not speak TLS",
    "UNKNOWN_PROTOCOL": "the peer does not speak TLS",
    "PACKET_LENGTH_TOO_LONG": "the peer does not speak TLS",
    "RECORD_LAYER_FAILURE": "the peer does not speak TLS",
    "UNEXPECTED_EOF_WHILE_READING": "the peer closed the connection during the TLS handshake "
                                    "(does it speak TLS?)",
    "EOF_IN_VIOLATION_OF_PROTOCOL": "the peer closed the connection during the TLS handshake "
                                    "(does it speak TLS?)",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust our certificate (signed by a CA it "
                              "does not know)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer rejected our certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the peer says our certificate has expired",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a certificate and we have none "
                                         "(--tls-cert/--tls-key)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the peer sent no certificate "
                                         "(--tls-require-client-cert)",
    "CERTIFICATE_VERIFY_FAILED": "the peer's certificate did not verify",
    "NO_SHARED_CIPHER": "no cipher in common with the peer",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common with the peer (we need 1.2 or later)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common with the peer",
}


def describe(exc: BaseException) -> str:
    """A TLS failure in words, with OpenSSL's own reason in parentheses."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the peer's certificate did not verify: {exc.verify_message}"
    if isinstance(exc, ssl.SSLEOFError):
        return _REASONS["UNEXPECTED_EOF_WHILE_READING"]
    reason = getattr(exc, "reason", None)
    if isinstance(exc, ssl.SSLError) and reason:
        plain = _REASONS.get(reason)
        return f"{plain} ({reason})" if plain else reason.replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# -- the connection -------------------------------------------------------------------------------


class TLSConnection(Connection):
    """A ``Connection`` over TLS."""

    def __init__(self, loop: Any, sock: socket.socket, owner: Any, *, tls: TLS,
                 connecting: bool = False, **kwargs: Any) -> None:
        self.tls = tls
        self._tcp_connecting = connecting
        self._chunk: Any = None                 # handed to SSL_write, not finished
        self._write_wants_read = False
        self._read_wants_write = False
        self._eof = False
        self._handshake_timer: Any = None
        # Until the handshake is done the connection counts as connecting:
        # what the owner sends waits in the queues. The first event (writable
        # at once for an accepted socket) wraps the socket and starts it.
        super().__init__(loop, sock, owner, connecting=True, **kwargs)
        if tls.handshake_timeout:
            self._handshake_timer = loop.call_later(tls.handshake_timeout,
                                                    self._handshake_overdue)

    def __repr__(self) -> str:
        return super().__repr__().replace("<Connection", "<TLSConnection", 1)

    @property
    def buffered(self) -> int:
        chunk = self._chunk
        return len(self._out) + self._bulk_size + (len(chunk) if chunk is not None else 0)

    @property
    def peer_cert(self) -> dict | None:
        """The peer's verified certificate (``SSLSocket.getpeercert()``); None
        before the handshake is done, or if the peer presented none."""
        if self._connecting or self.closed:
            return None
        try:
            return self.sock.getpeercert() or None
        except (ValueError, OSError):
            return None

    # -- handshake -----------------------------------------------------------------

    def _finish_connect(self) -> None:
        if self._tcp_connecting:
            if self._connect_failed():
                return
            self._tcp_connecting = False
        if not isinstance(self.sock, ssl.SSLSocket) and not self._wrap():
            return
        self._handshake()

    def _wrap(self) -> bool:
        registered = bool(self._events)
        if registered:
            self.loop.unregister(self.sock)
        try:
            self.sock = self.tls.context.wrap_socket(
                self.sock, server_side=self.tls.server_side,
                server_hostname=None if self.tls.server_side else self.tls.server_hostname,
                do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            self._events = 0
            self._failed("TLS setup failed", exc)
            return False
        if registered:
            self.loop.register(self.sock, self._events, self)
        return True

    def _handshake(self) -> None:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._set_events(EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._set_events(EVENT_WRITE)
            return
        except (ssl.SSLError, OSError) as exc:
            self._failed("TLS handshake failed", exc)
            return
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%r: TLS established (%s, %s)", self, self.sock.version(),
                      (self.sock.cipher() or ("?",))[0])
        self._established()
        if not self.closed and self._reading and self.sock.pending():
            self.loop.call_soon(self._read_more)

    def _handshake_overdue(self) -> None:
        self._handshake_timer = None
        if self._connecting and not self.closed:
            self._failed("TLS handshake failed",
                         TimeoutError(f"not completed within {self.tls.handshake_timeout:g} s"))

    def _failed(self, what: str, exc: BaseException) -> None:
        reason = f"{what}: {describe(exc)}"
        log.warning("%s: %s; closing", self.label or self.peer_address, reason)
        self.close(reason)

    # -- events ----------------------------------------------------------------------

    def handle_event(self, mask: int) -> None:
        if self._connecting:
            self._finish_connect()
            return
        if self._write_wants_read and mask & EVENT_READ:
            self._write_wants_read = False
            self.flush()
            if self.closed:
                return
        if self._read_wants_write and mask & EVENT_WRITE:
            self._read_wants_write = False
            self._read()
            if self.closed:
                return
        if mask & EVENT_READ and self._reading:
            self._read()
        if mask & EVENT_WRITE and not self.closed:
            self.flush()

    def pause_reading(self) -> None:
        if self._connecting:
            self._reading = False     # the handshake still reads; reading resumes after
            return
        super().pause_reading()

    def resume_reading(self) -> None:
        super().resume_reading()
        if not self.closed and not self._connecting and self.sock.pending():
            self.loop.call_soon(self._read_more)

    # -- input ------------------------------------------------------------------------

    def _read(self) -> None:
        super()._read()
        if self.closed:
            return
        if self._eof:
            self.close("connection closed by peer")
        elif self._reading and self.sock.pending():
            # Decrypted bytes left in OpenSSL's buffer: select() cannot see
            # them, so read them before this pass ends.
            self.loop.call_soon(self._read_more)

    def _read_more(self) -> None:
        if self.closed or self._connecting or not self._reading:
            return
        try:
            self._read()
        except Exception as exc:      # as the loop treats a handler's failure
            log.exception("reading %r failed", self)
            self.abort(f"internal error: {exc!r}")

    def _recv_into(self, buffer: memoryview) -> int:
        """Fill ``buffer`` from every TLS record ready now (one ``recv_into``
        returns at most one record); 0 if nothing (or the connection ended)."""
        sock = self.sock
        size = len(buffer)
        got = 0
        while got < size:
            try:
                n = sock.recv_into(buffer[got:] if got else buffer)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLWantWriteError:
                self._read_wants_write = True
                self._set_events(self._events | EVENT_WRITE)
                break
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:            # ssl.SSLError included
                self._lost(exc, "receive failed")
                return 0
            if not n:
                self._eof = True
                break
            got += n
        if not got:
            if self._eof:
                self._lost(None, "")
            return 0
        self.bytes_in += got
        self.last_received = _monotonic()
        return got

    def _lost(self, exc: OSError | None, what: str) -> None:
        """The link failed while we were doing ``what`` (``exc`` None: a clean
        end of stream)."""
        if self.bytes_in == 0 and not self.tls.server_side:
            # In TLS 1.3 our side of the handshake is over before the server
            # has checked our certificate: its refusal comes as the first read,
            # as an alert or, if the connection is reset first, as nothing.
            if not (isinstance(exc, ssl.SSLError) and "ALERT" in (exc.reason or "")):
                exc = ConnectionError("the server closed the connection right after the "
                                      "handshake: it may have refused our certificate, or "
                                      "the lack of one (its log says why)")
            self._failed("TLS handshake failed", exc)
        elif exc is None:
            self.close("connection closed by peer")
        elif isinstance(exc, ssl.SSLError):
            self._failed("TLS error", exc)
        else:
            self.close(f"{what}: {exc.strerror or exc}")

    # -- output -----------------------------------------------------------------------

    def _next_chunk(self) -> Any:
        """Take the next bytes to send off the queues (control bytes first, but
        never into the middle of a bulk frame); None when nothing waits."""
        out = self._out
        if out and not self._bulk_started:
            if len(out) <= SEND_SIZE:
                self._out = bytearray()
                return out
            chunk = out[:SEND_SIZE]
            del out[:SEND_SIZE]
            return chunk
        if not self._bulk:
            return None
        parts = self._bulk[0]
        taken: list[Any] = []
        size = 0
        while parts and size < SEND_SIZE:
            part = parts[0]
            room = SEND_SIZE - size
            if len(part) <= room:
                taken.append(parts.pop(0))
                size += len(part)
            else:
                taken.append(part[:room])
                parts[0] = part[room:]
                size = SEND_SIZE
        if parts:
            self._bulk_started = True
        else:
            self._bulk.popleft()
            self._bulk_started = False
        self._bulk_size -= size
        return taken[0] if len(taken) == 1 else b"".join(taken)

    def flush(self) -> None:
        if self.closed or self._connecting:
            return
        sock = self.sock
        try:
            while True:
                chunk = self._chunk
                if chunk is None:
                    chunk = self._next_chunk()
                    if chunk is None:
                        break
                    self._chunk = chunk
                # A write OpenSSL could not finish must be repeated with the
                # same bytes: the chunk stays in ``_chunk`` until it is done.
                n = sock.send(chunk)
                self.bytes_out += n
                self._chunk = None if n >= len(chunk) else memoryview(chunk)[n:]
        except ssl.SSLWantWriteError:
            pass
        except ssl.SSLWantReadError:
            self._write_wants_read = True
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:                # ssl.SSLError included
            self._lost(exc, "send failed")
            return
        if not self._reading and self.buffered <= self.max_send_buffer // 4:
            log.info("%r: caught up; reading again", self)
            self.resume_reading()
            if self.closed:
                return
        events = self._read_bit() | (EVENT_READ if self._write_wants_read else 0)
        if self._chunk is not None or self._out or self._bulk or self._read_wants_write:
            events |= EVENT_WRITE
        elif self._close_after_flush:
            self.close(self.close_reason)
            return
        if events != self._events:
            self._set_events(events)

    # -- teardown ----------------------------------------------------------------------

    def close(self, reason: str) -> None:
        if self.closed:
            return
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self._chunk = None
        super().close(reason)


def new_connection(loop: Any, sock: socket.socket, owner: Any, *, tls: TLS | None = None,
                   **kwargs: Any) -> Connection:
    """A ``Connection`` for ``sock``: over TLS (a ``TLSConnection``) when
    ``tls`` is given, plain TCP when it is None."""
    if tls is None:
        return Connection(loop, sock, owner, **kwargs)
    return TLSConnection(loop, sock, owner, tls=tls, **kwargs)
