"""The pure pick function, table-tested."""

from __future__ import annotations

import dataclasses
import json

from collections import Counter

import pytest

from crc.jobs.load import LoadReport, LoadTable, should_send
from crc.jobs.scheduler import Ledger, by_name, pick, score, spread

ME = 1


def report(server: int, running: int = 0, queued: int = 0, slots: int = 2, load1: float = 0.0,
           origins: dict[int, int] | None = None, ncpu: int = 2, seq: int = 1) -> LoadReport:
    return LoadReport(server, f"s{server}", cpu=0.0, mem=10.0, load1=load1, ncpu=ncpu,
                      slots=slots, running=running, queued=queued, origins=origins or {}, seq=seq)


def test_eight_jobs_over_four_idle_servers_land_two_each() -> None:
    reports = [report(i) for i in (1, 2, 3, 4)]
    placed = spread(reports, Ledger(), ME, 8)
    assert Counter(placed) == {1: 2, 2: 2, 3: 2, 4: 2}
    assert placed[:4] == [1, 2, 3, 4]      # ties: least recently picked, then lowest id


@pytest.mark.parametrize("reports, expected", [
    ([report(2, running=2), report(3, running=0)], 3),             # fewer jobs wins
    ([report(2, running=1, slots=4), report(3, running=1, slots=2)], 2),  # per-slot load
    ([report(2, queued=3), report(3, running=2)], 3),              # queued jobs count
    ([report(2, load1=2.0), report(3)], 3),                        # machine busy with other work
    ([report(3), report(2)], 2),                                   # tie: lowest id
    ([], None),
])
def test_pick_table(reports: list[LoadReport], expected: int | None) -> None:
    chosen = pick(reports, Ledger(), ME)
    assert (chosen.server if chosen else None) == expected


def test_unreported_dispatches_count_until_the_report_shows_them() -> None:
    ledger = Ledger()
    ledger.record(2)
    ledger.record(2)
    assert ledger.unreported(report(2), ME) == 2
    # The server's report now shows both jobs as received from us.
    shown = report(2, running=2, origins={ME: 2})
    assert ledger.unreported(shown, ME) == 0
    assert score(shown, 0) == score(report(2), 2)


def test_recently_picked_loses_a_tie() -> None:
    ledger = Ledger()
    ledger.record(2)
    # Server 2's report already shows our job, and server 3 is equally loaded.
    a, b = report(2, running=1, origins={ME: 1}), report(3, running=1)
    assert pick([a, b], ledger, ME).server == 3


def test_by_name_accepts_name_or_id_and_returns_every_namesake() -> None:
    rs = [report(2), report(3)]
    assert [r.server for r in by_name(rs, "s3")] == [3]
    assert [r.server for r in by_name(rs, "2")] == [2]
    assert by_name(rs, "nope") == []
    twins = [report(2), dataclasses.replace(report(3), name="s2")]
    assert sorted(r.server for r in by_name(twins, "s2")) == [2, 3]
    assert [r.server for r in by_name(twins, "3")] == [3]


def test_load_table_ages_and_staleness() -> None:
    table = LoadTable(stale_after=5.0)
    table.update(report(2, seq=3), now=100.0)
    table.update(report(3), now=90.0)
    assert [e.report.server for e in table.fresh(now=101.0)] == [2]
    assert not table.update(report(2, seq=2), now=102.0)    # older report ignored
    assert table.entries[2].age(104.0) == 4.0


def test_should_send_on_change_or_interval() -> None:
    base = report(2)
    assert should_send(None, base, 0.0, 5.0)
    assert not should_send(base, base, 1.0, 5.0)
    assert should_send(base, report(2, running=1), 1.0, 5.0)
    assert should_send(base, base, 5.0, 5.0)


def test_report_round_trips_through_bytes() -> None:
    r = report(7, running=1, origins={1: 4, 9: 2})
    assert LoadReport.from_bytes(r.to_bytes()) == r


def test_a_report_body_is_every_field_but_the_compilers_in_order() -> None:
    r = dataclasses.replace(report(7, running=1, origins={1: 4, 9: 2}), compilers=("c1",),
                            seq=5)
    body = {k: v for k, v in dataclasses.asdict(r).items() if k != "compilers"}
    body["origins"] = {"1": 4, "9": 2}
    assert r.to_bytes() == json.dumps(body, separators=(",", ":")).encode()
