"""Reliable chat bookkeeping: outbox, inbox and journal, driven directly."""

from __future__ import annotations

import pytest

from crc.delivery import Inbox, Journal, JournalError, Outbox, pack_chat, unpack_chat
from crc.delivery.outbox import OutboxFull
from crc.protocol import ProtocolError


def test_outbox_numbers_per_destination_and_acks_cumulatively():
    box = Outbox(rto=1.0)
    a1, a2, b1, a3 = (box.add(7, "a1", 0), box.add(7, "a2", 0), box.add(8, "b1", 0),
                      box.add(7, "a3", 0))
    assert [a1.seq, a2.seq, a3.seq, b1.seq] == [1, 2, 3, 1]
    assert a1.stream == a2.stream != b1.stream
    assert [m.text for m in box.acked(a1.stream, 2, 0.5)] == ["a1", "a2"]
    assert len(box) == 2
    assert box.acked(a1.stream, 2, 0.6) == []          # a repeated ack covers nothing new
    assert box.by_id[a1.stream].base == 3


def test_outbox_resends_whole_stream_with_backoff_and_gives_up():
    box = Outbox(rto=1.0, max_rto=4.0, give_up=10.0)
    first = box.add(7, "x", 0.0)
    box.add(7, "y", 0.0)
    assert box.due(0.5) == ([], [])
    resend, abandoned = box.due(1.0)
    assert [m.text for m in resend] == ["x", "y"] and not abandoned
    assert box.next_deadline() == pytest.approx(3.0)    # doubled to 2 s
    box.due(3.0)
    assert box.next_deadline() == pytest.approx(7.0)    # 4 s: the cap
    box.due(7.0)
    assert box.next_deadline() == pytest.approx(11.0)
    resend, abandoned = box.due(11.0)
    assert resend == [] and [m.text for m in abandoned] == ["x", "y"]
    assert len(box) == 0 and box.add(7, "z", 12.0).stream != first.stream   # a new stream


def test_outbox_nack_then_ack_resets_backoff():
    box = Outbox(rto=1.0)
    msg = box.add(7, "x", 0.0)
    assert box.nacked(msg.stream, 1, "Unknown ID 7", 0.1) is True
    assert box.nacked(msg.stream, 1, "Unknown ID 7", 0.2) is False   # reported once
    box.due(1.2)
    box.acked(msg.stream, 1, 2.0)
    assert box.by_id[msg.stream].unreachable == "" and box.next_deadline() is None


def test_outbox_is_bounded():
    box = Outbox(max_pending=3)
    for i in range(3):
        box.add(1, str(i), 0)
    with pytest.raises(OutboxFull, match="at most 3"):
        box.add(2, "too many", 0)


def test_inbox_delivers_in_order_once_and_fills_gaps():
    box = Inbox()
    assert box.accept(5, 99, 1, 1, "a") == ([(1, "a")], 1)
    assert box.accept(5, 99, 3, 1, "c") == ([], 1)             # held: 2 is missing
    assert box.accept(5, 99, 1, 1, "a") == ([], 1)             # duplicate
    assert box.accept(5, 99, 2, 1, "b") == ([(2, "b"), (3, "c")], 3)
    assert box.accept(5, 99, 3, 1, "c") == ([], 3)
    assert box.duplicates == 2
    assert box.accept(6, 99, 1, 1, "other sender") == ([(1, "other sender")], 1)


def test_inbox_without_a_record_starts_at_the_senders_base():
    box = Inbox()
    # 1..56 were acknowledged by an earlier incarnation of this receiver.
    assert box.accept(5, 1, 57, 57, "x") == ([(57, "x")], 57)


def test_inbox_forgets_least_recently_used_streams():
    box = Inbox(max_streams=2)
    box.accept(1, 1, 1, 1, "a")
    box.accept(2, 1, 1, 1, "b")
    box.accept(1, 1, 2, 1, "a2")        # sender 1 used again
    box.accept(3, 1, 1, 1, "c")         # evicts sender 2
    assert set(box.expected) == {(1, 1), (3, 1)}


def test_chat_payload_round_trip_and_bad_payloads():
    assert unpack_chat(pack_chat(2**63, 5, 3, "héllo")) == (2**63, 5, 3, "héllo")
    with pytest.raises(ProtocolError, match="at least"):
        unpack_chat(b"short")
    with pytest.raises(ProtocolError, match="base"):
        unpack_chat(pack_chat(1, 2, 3, "base beyond seq"))
    with pytest.raises(ProtocolError, match="UTF-8"):
        unpack_chat(pack_chat(1, 1, 1, "") + b"\xff")


def test_journal_replays_outbox_and_inbox(tmp_path):
    journal = Journal(tmp_path)
    box, inbox = Outbox(), Inbox()
    journal.load(box, inbox, 0.0)
    sent = [box.add(7, f"m{i}", 0.0) for i in range(5)]
    for msg in sent:
        journal.sent(msg)
    box.acked(sent[0].stream, 2, 0.1)
    journal.acked(sent[0].stream, 2)
    delivered, _ = inbox.accept(9, 42, 1, 1, "in")
    journal.delivered(9, 42, 1)
    # No close(): as if killed. A new process replays it.
    box2, inbox2 = Outbox(), Inbox()
    Journal(tmp_path).load(box2, inbox2, 5.0)
    assert [m.text for m in box2.everything(5.0)] == ["m2", "m3", "m4"]
    assert box2.add(7, "next", 5.0).seq == 6          # numbering continues
    assert inbox2.accept(9, 42, 1, 1, "in") == ([], 1)  # not shown twice


def test_journal_ignores_a_torn_last_line_but_not_a_bad_middle(tmp_path):
    journal = Journal(tmp_path)
    box, inbox = Outbox(), Inbox()
    journal.load(box, inbox, 0.0)
    journal.sent(box.add(7, "kept", 0.0))
    journal.close()
    with open(tmp_path / "journal", "a") as f:
        f.write('["send", 1, 7, 2, "tor')
    box2 = Outbox()
    Journal(tmp_path).load(box2, Inbox(), 1.0)
    assert [m.text for m in box2.everything(1.0)] == ["kept"]
    (tmp_path / "journal").write_text('["bogus"]\n["send", 1, 7, 1, "x"]\n')
    with pytest.raises(JournalError, match=r"journal:1: malformed entry"):
        Journal(tmp_path).load(Outbox(), Inbox(), 0.0)


def test_journal_keeps_identity(tmp_path):
    journal = Journal(tmp_path)
    assert journal.identity() is None
    journal.save_identity(1234, "alice")
    assert Journal(tmp_path).identity() == {"id": 1234, "name": "alice"}
    (tmp_path / "identity.json").write_text("[]")
    with pytest.raises(JournalError, match="identity.json"):
        Journal(tmp_path).identity()


@pytest.mark.parametrize("identity", ['{"id": 0, "name": "x"}', '{"id": -5, "name": "x"}',
                                      '{"id": true, "name": "x"}',
                                      '{"id": 1099511627776, "name": "x"}'])
def test_journal_refuses_an_identity_that_is_no_id(tmp_path, identity):
    (tmp_path / "identity.json").write_text(identity)
    with pytest.raises(JournalError, match="a number from 1 to 4294967295"):
        Journal(tmp_path).identity()


@pytest.mark.parametrize("line", ['["ack", 1, 1e400]', "[" * 100_000,
                                  '["send", 1, 99999999999, 1, "hello"]',
                                  '["send", 1, 0, 1, "to nobody"]', '["send", -1, 5, 1, "x"]',
                                  '{"a": 1}', '["recv", 1, true, 3]'])
def test_journal_names_the_line_of_any_malformed_entry(tmp_path, line):
    (tmp_path / "journal").write_text(f'["recv", 5, 9, 1]\n{line}\n["recv", 5, 9, 2]\n')
    with pytest.raises(JournalError, match=r"journal:2: malformed entry"):
        Journal(tmp_path).load(Outbox(), Inbox(), 0.0)


def test_journal_that_cannot_be_written_is_a_clear_error(tmp_path):
    (tmp_path / "journal.tmp").mkdir()
    with pytest.raises(JournalError, match="cannot write state directory"):
        Journal(tmp_path).load(Outbox(), Inbox(), 0.0)
