"""The atheris target fuzz/fuzz_decoder.py keeps working without atheris.

Its one-input function is run on a few hundred inputs (valid streams with
bytes overwritten, and random bytes, in every delivery and both limits), so a
change to the decoder that breaks the target's properties, or a change that
breaks the target itself, fails here and not only in a long fuzzing run.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from crc.protocol import (
    ClientChat, ClientQuit, ClientRegistration, Extension, ServerQuit, ServerRegistration, Status,
    encode,
)

TARGET = Path(__file__).resolve().parent.parent / "fuzz" / "fuzz_decoder.py"

SAMPLES = [
    ServerRegistration(1, 0, "s1", "a server"), ClientRegistration(5, 0, "née", "ïnfo"),
    Status(1, 2, 0, "Welcome ✓"), ClientChat(5, 6, "héllo"), ClientQuit(5, "bye"),
    ServerQuit(1, 0, "gone"), Extension(21, 1, 2, 1, b"\x00\xff" * 40),
    Extension(22, 1, 2, 0, bytes(range(256)) * 140),      # received in place (35 KiB)
]


@pytest.fixture(scope="module")
def target(monkeypatch_module: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch_module.setitem(sys.modules, "atheris", None)   # importing it would fail
    spec = importlib.util.spec_from_file_location("fuzz_decoder", TARGET)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def an_input(rng: random.Random) -> bytes:
    if rng.random() < 0.25:
        stream = rng.randbytes(rng.randint(0, 300))
    else:
        stream = bytearray(b"".join(encode(rng.choice(SAMPLES))
                                    for _ in range(rng.randint(1, 5))))
        for _ in range(rng.choice([0, 0, 1, 2, 3])):
            stream[rng.randrange(len(stream))] = rng.randrange(256)
    count = rng.randint(0, 15)
    return (bytes([rng.randrange(8), count]) + rng.randbytes(2 * count) + bytes(stream))


def test_the_target_holds_on_a_few_hundred_inputs_without_atheris(target: ModuleType) -> None:
    rng = random.Random(4242)
    decoded = refused = whole = 0
    for _ in range(400):
        data = an_input(rng)
        messages, failed = target.check(data)   # raises on a broken property
        decoded += messages
        refused += failed
        whole += not failed and messages > 0
        target.test_one_input(data)
    # The inputs reach both sides: streams that decode, and streams refused.
    assert decoded > 500 and whole > 100 and refused > 50


def test_the_target_reports_a_broken_property(target: ModuleType,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A decoder that loses a message must be caught, not pass silently.
    real_feed = target.Decoder.feed
    monkeypatch.setattr(target.Decoder, "feed", lambda self, data: real_feed(self, data)[1:])
    with pytest.raises(AssertionError):
        target.check(bytes([0, 0]) + encode(ClientChat(1, 2, "a")) + encode(ClientQuit(1, "")))
