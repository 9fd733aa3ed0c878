"""Reliable chat, the client's side (``crc.delivery`` holds the parts).

Chats to other mesh clients are numbered, kept in the outbox (and, with a
state directory, the journal) until the receiver acknowledges them, resent
on a backing-off timer across reconnects and restarts, and reported
undeliverable when refused, or after ``give_up`` seconds. Chats that arrive
are delivered once, in order, then acknowledged in a batch per turn of the
loop. Over a server that does not carry reliable chat, what waits goes out
as plain v1 chats. Knows the ``ChatClient`` only for its link, its journal
and its events; never opens or closes a connection.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

from ..delivery import (ChatKind, Inbox, Outbox, Pending, pack_ack, pack_chat, unpack_ack,
                        unpack_chat, unpack_nack)
from ..delivery.outbox import OutboxFull
from ..protocol import ClientChat, Extension, encode

if TYPE_CHECKING:
    from .core import ChatClient

log = logging.getLogger("crc.client.core")     # the client's log: one name for its parts


class OutboxRefused(Exception):
    """The outbox cannot take another chat (``OutboxFull``'s words)."""


class ReliableChats:
    def __init__(self, client: ChatClient, resend_after: float, give_up: float) -> None:
        self.client = client
        self.give_up = give_up
        self.outbox = Outbox(resend_after, give_up=give_up)
        self.inbox = Inbox()
        #: (source, stream) -> the highest number to acknowledge this turn.
        self.acks: dict[tuple[int, int], int] = {}
        self._retry_timer = None
        self._retry_at = 0.0
        self.handlers: dict[int, Callable[[Extension], None]] = {
            ChatKind.CHAT: self._on_chat,
            ChatKind.ACK: self._on_ack,
            ChatKind.NACK: self._on_nack,
            ChatKind.REFUSED: self._on_refused,
        }

    # -- sending ---------------------------------------------------------------------

    def queue(self, dest: int, text: str) -> None:
        """Keep a chat until acknowledged; send it now if the link carries
        reliable chat. ``OutboxRefused`` if the outbox is full."""
        client = self.client
        encode(ClientChat(client.id, dest, text))   # EncodeError now, not at a far server
        try:
            msg = self.outbox.add(dest, text, time.monotonic())
        except OutboxFull as exc:
            raise OutboxRefused(str(exc)) from None
        if client.journal is not None:
            client.journal.sent(msg)
        if client.rchat and client.connected:
            self._send(msg)
        self.arm_retry()

    def _send(self, msg: Pending) -> None:
        msg.sends += 1
        base = self.outbox.by_id[msg.stream].base
        client = self.client
        client.conn.send(Extension(ChatKind.CHAT, client.id, msg.dest, 0,
                                   pack_chat(msg.stream, msg.seq, base, msg.text)))

    def link_ready(self) -> None:
        """A connection is settled: send what waits (as v1 chats if it does
        not carry reliable chat), after refusing what it cannot carry."""
        self._refuse_oversized()
        if self.client.rchat:
            for msg in self.outbox.everything(time.monotonic()):
                self._send(msg)
            self.arm_retry()
        else:
            self._flush_plain()

    def _flush_plain(self) -> None:
        """The server cannot carry reliable chat: what waited goes out as v1 chats."""
        client = self.client
        for msg in self.outbox.everything(time.monotonic()):
            client.conn.send(ClientChat(client.id, msg.dest, msg.text))
            self._acked_locally(msg.stream, msg.seq)

    def _acked_locally(self, stream: int, seq: int) -> None:
        journal = self.client.journal
        if self.outbox.acked(stream, seq, time.monotonic()) and journal is not None:
            journal.acked(stream, seq)

    def wake(self, user: int) -> None:
        """``user`` (re)appeared: chats waiting for it go now."""
        if self.outbox.wake(user, time.monotonic()):
            self.arm_retry(now=True)

    # -- resending ---------------------------------------------------------------------

    def arm_retry(self, now: bool = False) -> None:
        due = self.outbox.next_deadline()
        if due is None:
            return
        if now:                          # after the messages in hand
            due = time.monotonic()
        if self._retry_timer is not None:
            if self._retry_at <= due:
                return
            self._retry_timer.cancel()
        self._retry_at = due
        self._retry_timer = self.client.loop.call_later(max(0.0, due - time.monotonic()),
                                                        self._retry)

    def _retry(self) -> None:
        self._retry_timer = None
        client, journal = self.client, self.client.journal
        resend, abandoned = self.outbox.due(time.monotonic())
        if resend and client.rchat and client.connected:
            log.debug("%s: resending %d unacknowledged chat(s)", client.name, len(resend))
            for msg in resend:
                self._send(msg)
        if abandoned:
            for stream in {m.stream for m in abandoned}:
                if journal is not None:
                    journal.dropped(stream)
            for msg in abandoned:
                client.emit("undelivered", dest=msg.dest, name=client.display_name(msg.dest),
                             text=msg.text, reason=f"not acknowledged within "
                                                   f"{self.give_up:g} s")
        if journal is not None and journal.due_for_compaction():
            journal.compact(self.outbox, self.inbox)
        self.arm_retry()

    # -- what arrives ------------------------------------------------------------------

    def _on_chat(self, msg: Extension) -> None:
        client = self.client
        stream, seq, base, text = unpack_chat(msg.payload)
        deliver, ack = self.inbox.accept(msg.source, stream, seq, base, text)
        for number, body in deliver:
            # Shown first, then recorded, then (after the batch) acknowledged:
            # a kill in between can show a chat again after a restart, never
            # lose it (docs/protocol.md, "Reliable chat").
            client.chat_log.append((msg.source, body))
            client.emit("chat", source=msg.source, name=client.display_name(msg.source),
                         text=body)
            if client.journal is not None:
                client.journal.delivered(msg.source, stream, number)
        if ack:
            self.acks[(msg.source, stream)] = ack

    def flush_acks(self) -> None:
        """Acknowledge what this turn delivered (one ACK per stream)."""
        client = self.client
        if client.connected and client.rchat:
            for (source, stream), seq in self.acks.items():
                client.conn.send(Extension(ChatKind.ACK, client.id, source, 0,
                                           pack_ack(stream, seq)))
        self.acks.clear()

    def _on_ack(self, msg: Extension) -> None:
        stream, seq = unpack_ack(msg.payload)
        done = self.outbox.acked(stream, seq, time.monotonic())
        if done:
            if self.client.journal is not None:
                self.client.journal.acked(stream, seq)
            self.client.emit("delivered", dest=msg.source, count=len(done), seq=seq)
        self.arm_retry()

    def _refuse_oversized(self) -> None:
        """Chats kept from before (a restart, a reconnect) that this server
        cannot carry are reported undeliverable, not sent to be refused."""
        max_chat = self.client.max_chat
        for stream in list(self.outbox.by_dest.values()):
            for pending in list(stream.unacked):
                size = len(pending.text.encode("utf-8", "surrogatepass"))
                if size > max_chat:
                    self._refused(stream.id, pending.seq, f"{size} bytes; this server carries "
                                                          f"at most {max_chat}")

    def _refused(self, stream: int, seq: int, reason: str) -> None:
        refused = self.outbox.refused(stream, seq)
        if refused is None:
            return
        client = self.client
        if client.journal is not None:
            client.journal.refused(stream, seq)
        client.emit("undelivered", dest=refused.dest, name=client.display_name(refused.dest),
                     text=refused.text, reason=reason)

    def _on_refused(self, msg: Extension) -> None:
        stream, seq, reason = unpack_nack(msg.payload)
        self._refused(stream, seq, reason)
        self.arm_retry()

    def _on_nack(self, msg: Extension) -> None:
        stream, seq, reason = unpack_nack(msg.payload)
        stream_state = self.outbox.by_id.get(stream)
        if self.outbox.nacked(stream, seq, reason, time.monotonic()) and stream_state:
            self.client.emit("unreachable", dest=stream_state.dest, reason=reason,
                              name=self.client.display_name(stream_state.dest),
                              waiting=len(stream_state.unacked))
        self.arm_retry()
