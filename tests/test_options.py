"""Command-line value types (``crc.options``): what each accepts, and the
one-line reason for what it refuses. Table-driven: every row was once a
traceback, a hang or a silent surprise."""

from __future__ import annotations

import pytest

from crc.options import (MAX_SECONDS, OptionError, byte_size, file_name, host_id, host_port,
                         host_ports, port_number, seconds, seconds_or_zero, size_at_least)


@pytest.mark.parametrize("text, value", [
    ("127.0.0.1:5", ("127.0.0.1", 5)), ("[::1]:31101", ("::1", 31101)),
    ("example.org:65535", ("example.org", 65535)), (" h:07 ", ("h", 7)),
])
def test_host_port_accepts(text: str, value: tuple[str, int]) -> None:
    assert host_port(text) == value


@pytest.mark.parametrize("text, reason", [
    ("::1:5", "an IPv6 address goes in brackets: [::1]:5"), ("[::1]", "expected [IPV6]:PORT"),
    (":5", "expected HOST:PORT"), ("host:", "port '' in 'host:' is not a number"),
    ("h:70000", "out of range"), ("h:0", "out of range"), ("h:²", "is not a number"),
    ("\udcff:5", "is not a host name or address"), ("noport", "expected HOST:PORT"),
])
def test_host_port_refuses(text: str, reason: str) -> None:
    with pytest.raises(OptionError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        host_port(text)


def test_host_ports_needs_at_least_one() -> None:
    assert host_ports("a:1,,b:2,") == [("a", 1), ("b", 2)]
    with pytest.raises(OptionError):
        host_ports(" , ")


@pytest.mark.parametrize("text, value", [("010", 10), ("0x10", 16), ("4294967295", 4294967295)])
def test_ids(text: str, value: int) -> None:
    assert host_id(text) == value


@pytest.mark.parametrize("text", ["0", "4294967296", "-1", "1e3", "", "0x"])
def test_bad_ids(text: str) -> None:
    with pytest.raises(OptionError):
        host_id(text)


@pytest.mark.parametrize("text, value", [
    ("4096", 4096), ("512K", 512 << 10), ("100M", 100 << 20), ("1.5G", 3 << 29),
    ("64KiB", 64 << 10), ("2MB", 2 << 20), ("10k", 10 << 10),
])
def test_sizes(text: str, value: int) -> None:
    assert byte_size(text) == value


@pytest.mark.parametrize("text", ["0", "-5", "nan", "inf", "5X", "M", "", "1e30"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(OptionError):
        byte_size(text)


def test_a_size_can_have_a_floor() -> None:
    with pytest.raises(OptionError, match="out of range .64K"):
        size_at_least(64 << 10)("1")


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "1e30", str(MAX_SECONDS * 2), "x"])
def test_bad_seconds(text: str) -> None:
    with pytest.raises(OptionError):
        seconds(text)


def test_seconds_or_zero_reads_every_zero() -> None:
    assert seconds_or_zero("00") == seconds_or_zero("0.0") == 0.0
    assert seconds_or_zero("2.5") == 2.5


def test_an_empty_file_name_is_refused_not_taken_for_none() -> None:
    with pytest.raises(OptionError, match="--secret-file needs a file name"):
        file_name("--secret-file")("")


def test_port_numbers() -> None:
    assert port_number("0") == 0
    for bad in ("65536", "-1", "x", "²"):
        with pytest.raises(OptionError):
            port_number(bad)
