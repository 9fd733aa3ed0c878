#!/usr/bin/env python3
"""Coverage-guided fuzzing of the CRC decoder with atheris (libFuzzer).

    pip install -r fuzz/requirements.txt
    python fuzz/fuzz_decoder.py -atheris_runs=100000
    python fuzz/fuzz_decoder.py -max_total_time=600 fuzz/corpus/   # keeps what it learns

An input is read as: one byte choosing the delivery (``feed``, ``feed_relay``,
or the way ``Connection`` receives, with or without large payloads received in
place) and the limits (the defaults, or small caps that let lengths reach the
bodies); one byte giving a number of cuts (0-15); two bytes per cut (its
position, modulo the stream's length); then the stream itself, delivered in
the pieces between the cuts.

What must hold, whatever the input:

* nothing but ``ProtocolError`` escapes the decoder, and once it has raised
  one, it refuses further input with another;
* the messages that come out, re-encoded, are exactly the start of the
  stream (the decoder invents nothing and drops nothing), and, when no error
  was raised, they and ``Decoder.pending`` account for every byte;
* what came out decodes again, from its encoding, to the same messages.

A failure is an exception other than ``ProtocolError`` (an ``AssertionError``
for a broken property): libFuzzer stops and writes the input to a
``crash-*`` file. ``test_one_input`` needs only the project, not atheris, so
tests/test_fuzz_target.py runs it on a few hundred inputs in every test run.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from crc.protocol import DEFAULT_LIMITS, Decoder, Limits, ProtocolError, encode  # noqa: E402

#: Small enough caps that random length fields often fit, and a payload can
#: still be large enough to be received in place.
SMALL_LIMITS = Limits(max_text=100, max_payload=40_000)
DELIVERIES = ("feed", "feed_relay", "connection", "connection without in place")


def parse(data: bytes) -> tuple[str, Limits, bytes, list[int]]:
    """(delivery, limits, stream, sorted cut positions) encoded in ``data``."""
    head = data[0] if data else 0
    count = data[1] & 15 if len(data) > 1 else 0
    raw = data[2:2 + 2 * count]
    stream = data[2 + 2 * count:]
    cuts = sorted(int.from_bytes(raw[i:i + 2], "big") % (len(stream) + 1)
                  for i in range(0, len(raw) - 1, 2))
    return DELIVERIES[head & 3], SMALL_LIMITS if head & 4 else DEFAULT_LIMITS, stream, cuts


def deliver(decoder: Decoder, piece: bytes, how: str) -> list[bytes]:
    """Give ``piece`` to ``decoder`` the way ``how`` says; the wire bytes of what
    came out, in order (chats taken off by ``feed_relay`` are already bytes)."""
    if how == "feed":
        return [encode(m) for m in decoder.feed(piece)]
    if how == "feed_relay":
        chats, messages = decoder.feed_relay(piece)
        return [frame for _, _, frame in chats] + [encode(m) for m in messages]
    out, pos = [], 0
    while pos < len(piece):            # as Connection._read does
        target = decoder.receive_buffer()
        if target is None:
            return out + [encode(m) for m in decoder.feed(piece[pos:])]
        n = min(len(target), len(piece) - pos)
        target[:n] = piece[pos:pos + n]
        out += [encode(m) for m in decoder.received(n)]
        pos += n
    return out


def check(data: bytes) -> tuple[int, bool]:
    """Check one input; (messages decoded, whether the stream was refused)."""
    how, limits, stream, cuts = parse(data)
    decoder = Decoder(limits, allow_in_place=how != "connection without in place")
    out: list[bytes] = []
    start, failed = 0, False
    try:
        for cut in [*cuts, len(stream)]:
            out += deliver(decoder, stream[start:cut], how)
            start = cut
    except ProtocolError:
        failed = True
    decoded = b"".join(out)
    assert stream.startswith(decoded), "decoded messages are not the start of the stream"
    if failed:
        try:
            decoder.feed(b"\x81")
        except ProtocolError:
            pass
        else:
            raise AssertionError("a failed decoder accepted more input")
    else:
        assert len(decoded) + decoder.pending == len(stream), \
            f"{len(decoded)} bytes decoded + {decoder.pending} pending != {len(stream)} received"
    again = Decoder(limits).feed(decoded)
    assert b"".join(map(encode, again)) == decoded and len(again) == len(out), \
        "what came out does not decode again to the same messages"
    return len(out), failed


def test_one_input(data: bytes) -> None:
    """The libFuzzer entry point."""
    check(data)


def main() -> None:
    import inspect

    import atheris                     # only the fuzzing run needs it

    from crc.protocol import codec
    # Coverage feedback from the codec's own functions and Decoder's methods
    # (instrumented in place; the module was imported before atheris was).
    for obj in [*vars(codec).values(), *vars(codec.Decoder).values()]:
        obj = getattr(obj, "fget", None) or getattr(obj, "__func__", None) or obj
        if inspect.isfunction(obj) and obj.__module__ == codec.__name__:
            atheris.instrument_func(obj)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
