"""What a monitor sees of another server rides in its load reports; of the
reports a busy server sends as its jobs start and end, one a second
(``VIEW_EVERY``) carries that view. A view left behind — the report of a
job's end came too soon after the last view — follows once ``VIEW_EVERY``
has passed, not at the next periodic report (``--load-interval``, a
minute here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crc.server.jobs import reports

from .meshkit import Mesh, call, wait_for
from .test_jobs import finished, submit


def test_another_servers_view_catches_up_with_a_job_that_ended(
        mesh: Mesh, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reports, "VIEW_EVERY", 3.0)
    nodes = mesh.chain(2, load_interval=60.0)
    first, second = nodes
    client, jobs = mesh.client(first, "alice", work)
    there = call(second.server.loop, lambda: second.jobs.me)

    def seen() -> dict:
        return call(first.server.loop, lambda: first.jobs.reports.views.get(there)) or {}

    job, _ = submit(client, jobs, on="s2", shell="sleep 0.3")
    finished(job)
    # Its start and end (0.3 s apart: two reports) came within VIEW_EVERY of
    # the view s2 sent when the link came up, so neither carried one; the
    # view that counts the job follows, long before the minute is up.
    wait_for(lambda: seen().get("started") == 1 and seen().get("jobs") == [], 15,
             "s1's view of s2 to show the job started and gone")
