"""Reading a job frame's file list (``crc.server.jobs.frames.parse_files``):
entries found good are remembered, and what must be checked per job still is."""

from __future__ import annotations

import pytest

from crc.jobs.files import FileRef
from crc.protocol import ProtocolError
from crc.server.jobs import frames
from crc.server.jobs.frames import parse_files

SHA = "ab" * 32


def entry(name: str = "inc/a.h", sha: str = SHA, size: object = 10, **more: object) -> dict:
    return {"name": name, "sha": sha, "size": size, **more}


def test_a_good_entry_is_remembered_and_read_the_same() -> None:
    first = parse_files({"files": [entry(mode=0o755)]}, 100)
    assert ("inc/a.h", SHA, 10, 0o755) in frames._GOOD
    again = parse_files({"files": [entry(mode=0o755)]}, 100)
    assert first == again == [FileRef("inc/a.h", SHA, 10, 0o755)]


def test_the_size_limit_and_duplicates_are_checked_for_every_job() -> None:
    parse_files({"files": [entry()]}, 100)
    with pytest.raises(ProtocolError, match="is 10 bytes; the limit is 9"):
        parse_files({"files": [entry()]}, 9)
    with pytest.raises(ProtocolError, match="listed twice"):
        parse_files({"files": [entry(), entry()]}, 100)


@pytest.mark.parametrize("bad, message", [
    (entry(sha="AB" * 32), "has no valid SHA-256"),
    (entry(name="../a.h"), "leaves the job directory"),
    (entry(name="/etc/passwd"), "is absolute"),
    (entry(size=[1]), "bad file entry"),
    (entry(size="many"), "bad file entry"),
    (entry(size=float("inf")), "bad file entry"),            # (JSON's Infinity)
    ("inc/a.h", "bad file entry"),
    ({"name": "inc/a.h"}, "bad file entry"),
])
def test_bad_entries_are_refused_even_beside_good_ones_remembered(bad: object,
                                                                  message: str) -> None:
    parse_files({"files": [entry()]}, 100)
    with pytest.raises(ProtocolError, match=message):
        parse_files({"files": [bad]}, 100)
    if isinstance(bad, dict) and not isinstance(bad.get("size"), list):
        key = (bad.get("name"), bad.get("sha"), bad.get("size"), bad.get("mode", 0o644))
        assert key not in frames._GOOD              # (never remembered)
