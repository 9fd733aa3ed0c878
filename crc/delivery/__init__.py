"""Reliable chat delivery between mesh clients (docs/protocol.md, "Reliable chat").

Sender and receiver state, kept apart from any socket or loop so each piece is
a plain object that tests can drive directly:

* ``wire``    - the four extension kinds (CHAT, ACK, NACK, REFUSED) and their
  payloads;
* ``outbox``  - the sender's streams: sequence numbers, unacknowledged
  messages, when to resend;
* ``inbox``   - the receiver's streams: in-order delivery, de-duplication;
* ``journal`` - both of them on disk, so a client restarted with
  ``--state-dir`` loses and repeats nothing.

Imports only ``crc.protocol``: nothing here opens a socket or knows the event
loop, and only ``journal`` touches files.
"""

from .inbox import Inbox
from .journal import Journal, JournalError
from .outbox import Outbox, Pending
from .wire import ChatKind, pack_ack, pack_chat, pack_nack, unpack_ack, unpack_chat, unpack_nack

__all__ = ["ChatKind", "Inbox", "Journal", "JournalError", "Outbox", "Pending", "pack_ack",
           "pack_chat", "pack_nack", "unpack_ack", "unpack_chat", "unpack_nack"]
