"""Durable job results: a client's connection drops mid-job or mid-build, the
client reconnects (to the same or another server) and gets everything, once;
results expire; a restarted server still hands them out; job processes die
with a killed server."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from crc.client import ChatClient, ClientConfig
from crc.server.jobs import results
from crc.client.jobs.build import ActionRun, Build
from crc.client.jobs.engine import Job, JobClient
from crc.jobs.files import Sweeper
from crc.jobs.rakefile import parse
from crc.jobs.wire import Kind, frame
from crc.net import EventLoop

from .meshkit import Mesh, Node, call, wait_for

ROOT = Path(__file__).resolve().parent.parent


class Streams:
    """A job listener keeping stdout and stderr apart, and every event's name."""

    def __init__(self) -> None:
        self.out = {1: bytearray(), 2: bytearray()}
        self.events: list[str] = []

    def __call__(self, job: Job, run, event: str, data: object) -> None:
        self.events.append(event)
        if event == "output":
            stream, chunk = data
            self.out[stream] += chunk


def connect(mesh: Mesh, node: Node, name: str, base_dir: Path, *also: Node,
            **options) -> tuple[ChatClient, JobClient]:
    """A reconnecting job client on ``node`` (then the servers ``also``)."""
    config = ClientConfig(("127.0.0.1", node.server.port), name, reconnect=True,
                          reconnect_delay=options.pop("reconnect_delay", 0.05),
                          servers=tuple(("127.0.0.1", n.server.port) for n in also), **options)
    client, jobs = mesh.start_client(config, base_dir)
    wait_for(lambda: client.ext, 10, f"{name} to complete the extension handshake")
    return client, jobs


def cut(node: Node, client: ChatClient) -> None:
    """Close the client's link on the server's side (as a broken link would)."""
    call(node.server.loop, lambda: node.server.links[client.id].close("cut by the test"))


def reconnected(client: ChatClient, times: int = 2) -> None:
    wait_for(lambda: client.connections >= times and client.ext and not client.reconnecting,
             15, f"{client.name} to reconnect")


def counted(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def kept(node: Node) -> int:
    return call(node.server.loop, lambda: len(node.jobs.results.finished))


def result_files(node: Node) -> list[str]:
    """Files of output too large for the journal (``results.SPILL``)."""
    root = node.jobs.results.root
    return sorted(p.name for p in root.iterdir() if p.is_file() and p.name != "journal")


NUMBERED = ("i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo out $i; echo err $i >&2; "
            "sleep 0.05; done")


def numbered(n: int, stream: str) -> bytes:
    return "".join(f"{stream} {i}\n" for i in range(1, n + 1)).encode()


# -- a client cut off mid-job ---------------------------------------------------------


def test_client_cut_mid_job_gets_all_output_once_after_reconnecting(
        mesh: Mesh, work: Path, tmp_path: Path) -> None:
    nodes = mesh.chain(2)
    client, jobs = connect(mesh, nodes[0], "alice", work)
    count = tmp_path / "count"
    listener = Streams()
    shell = f"echo ran >> {count}; {NUMBERED.format(n=40)}; echo made > made.txt"
    job = call(client.loop, lambda: jobs.submit(shell=shell, on="s2", listener=listener))
    wait_for(lambda: b"out 3\n" in listener.out[1], 10, "the job's first lines")
    cut(nodes[0], client)
    wait_for(lambda: "waiting" in listener.events, 10, "the run to wait for the connection")
    reconnected(client)
    wait_for(lambda: job.finished, 30, "the job to finish")
    (run,) = job.runs.values()
    assert (run.state, run.exit, run.error) == ("done", 0, "")
    assert bytes(listener.out[1]) == numbered(40, "out")       # complete, nothing twice
    assert bytes(listener.out[2]) == numbered(40, "err")
    assert counted(count) == ["ran"]                            # it ran exactly once
    assert (work / "made.txt").read_text() == "made\n"
    assert call(nodes[1].server.loop, lambda: nodes[1].jobs.fetches_served) >= 1
    # Acknowledged: the executor forgets the result and deletes its files.
    wait_for(lambda: kept(nodes[1]) == 0, 10, "the executor to drop the acknowledged result")
    wait_for(lambda: result_files(nodes[1]) == [], 10, "the result's files to be deleted")


def test_output_too_large_for_the_journal_is_kept_in_files_and_sent_again_whole(
        mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(2)
    client, jobs = connect(mesh, nodes[0], "alice", work)
    listener = Streams()
    shell = 'for i in $(seq 1 30); do seq -f "line $i %g" 1 300; sleep 0.05; done'
    expected = "".join(f"line {i} {n}\n" for i in range(1, 31) for n in range(1, 301)).encode()
    assert len(expected) > results.SPILL
    job = call(client.loop, lambda: jobs.submit(shell=shell, on="s2", listener=listener))
    wait_for(lambda: len(listener.out[1]) > results.SPILL, 20, "the output to outgrow memory")
    cut(nodes[0], client)
    wait_for(lambda: result_files(nodes[1]), 10, "the output to go to a file of its own")
    reconnected(client)
    wait_for(lambda: job.finished, 30, "the job to finish")
    assert job.exit_code == 0
    assert bytes(listener.out[1]) == expected
    wait_for(lambda: kept(nodes[1]) == 0, 10, "the acknowledged result to go")
    wait_for(lambda: result_files(nodes[1]) == [], 10, "its files to be deleted")


def test_the_results_journal_is_compacted_and_survives_a_torn_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "COMPACT_MIN", 4096)
    loop = EventLoop()
    root = tmp_path / "results"

    def store() -> results.ResultStore:
        return results.ResultStore(root, Sweeper(loop, root / "trash"))

    first = store()
    assert first.load() == 0
    kept_ids = []
    for i in range(200):
        record = first.new(f"job.{i}", 7, 1, f"label {i}")
        first.append(record, 1, f"out {i}\n".encode())
        first.append(record, 2, f"err {i}\n".encode())
        first.append(record, 1, b"more\n")
        first.finish(record, Kind.DONE, {"id": record.id, "exit": i % 5})
        if i % 50 == 7:
            kept_ids.append(record.id)
    big = first.new("big", 7, 1, "big")
    blob = os.urandom(results.SPILL + 1000)
    first.append(big, 1, blob[:1000])
    first.append(big, 1, blob[1000:])
    first.finish(big, Kind.FAILED, {"id": "big", "error": "cancelled"})
    assert big.spilled and first.read(big, 1, 500, 1000) == blob[500:1500]
    for record in list(first.finished.values()):
        if record.id not in kept_ids and record.id != "big":
            first.remove(record)
    assert first.compactions >= 1
    assert root.joinpath("journal").stat().st_size < 4096 * 3
    for i in (7, 57, 107, 157):
        record = first.finished[f"job.{i}"]
        assert first.read(record, 1, 0, 100) == f"out {i}\nmore\n".encode()
        assert first.read(record, 2, 4, 100) == f"{i}\n".encode()
    first.close()
    with open(root / "journal", "ab") as f:            # killed while writing an entry
        f.write(b"\x00\x00\x01\x00\x00\x00\x00\x10{\"op\":")
    second = store()
    assert second.load() == 5
    assert sorted(second.finished) == sorted(kept_ids + ["big"])
    record = second.finished["job.107"]
    assert record.outcome == (Kind.DONE, {"id": "job.107", "exit": 2})
    assert (record.client, record.entry, record.label) == (7, 1, "label 107")
    assert second.read(record, 1, 0, 100) == b"out 107\nmore\n"
    assert second.read(second.finished["big"], 1, 0, len(blob)) == blob
    second.close()


def test_a_job_that_ends_while_its_client_is_away_is_collected_with_its_files(
        mesh: Mesh, work: Path, tmp_path: Path) -> None:
    nodes = mesh.chain(3)
    # Reconnect through s3 this time, after the job has ended.
    client, jobs = connect(mesh, nodes[0], "alice", work, nodes[2], reconnect_delay=0.5)
    (work / "in.txt").write_text("abc\n")
    listener = Streams()
    job = call(client.loop, lambda: jobs.submit(
        shell="tr a-z A-Z < in.txt > up.txt; echo $PPID > pid; echo went; sleep 0.3; exit 4",
        files=["in.txt"], on="s2", listener=listener))
    wait_for(lambda: b"went\n" in listener.out[1], 10, "the job to start")
    cut(nodes[0], client)
    wait_for(lambda: kept(nodes[1]) == 1, 10, "the job to end while its client is away")
    reconnected(client)
    assert client.server_address[1] == nodes[2].server.port
    wait_for(lambda: job.finished, 20, "the job's result to be collected")
    (run,) = job.runs.values()
    assert (run.state, run.exit, job.exit_code) == ("done", 4, 4)
    assert bytes(listener.out[1]) == b"went\n"
    assert (work / "up.txt").read_text() == "ABC\n"
    wait_for(lambda: kept(nodes[1]) == 0, 10, "the acknowledged result to go")


@pytest.mark.parametrize("elsewhere", [False, True], ids=["same-entry", "other-entry"])
def test_a_submit_sent_again_after_a_lost_accept_runs_once(
        mesh: Mesh, work: Path, tmp_path: Path, elsewhere: bool) -> None:
    nodes = mesh.chain(3)
    also = (nodes[1],) if elsewhere else ()
    client, jobs = connect(mesh, nodes[0], "alice", work, *also)
    count = tmp_path / "count"
    original = client.extension_handlers[Kind.ACCEPTED]

    def lose_the_accept(msg) -> None:
        # The answer never arrives: the connection breaks just then.
        client.extension_handlers[Kind.ACCEPTED] = original
        client.conn.close("cut by the test before ACCEPTED arrived")

    client.extension_handlers[Kind.ACCEPTED] = lose_the_accept
    listener = Streams()
    job = call(client.loop, lambda: jobs.submit(
        shell=f"echo ran >> {count}; sleep 0.3; echo once", on="s3", listener=listener))
    reconnected(client)
    wait_for(lambda: job.finished, 20, "the job to finish")
    (run,) = job.runs.values()
    assert (run.name, run.exit, run.error) == ("s3", 0, "")
    assert counted(count) == ["ran"]
    assert bytes(listener.out[1]) == b"once\n"
    entry = nodes[1] if elsewhere else nodes[0]
    assert client.server_address[1] == entry.server.port
    # The same entry answered from memory; another entry sent the job on, and
    # the executor recognised it.
    runs_received = call(nodes[2].server.loop, lambda: sum(nodes[2].jobs.origins.values()))
    assert runs_received == (2 if elsewhere else 1)


def test_jobs_submitted_while_reconnecting_go_out_once_the_connection_is_back(
        mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(2)
    client, jobs = connect(mesh, nodes[0], "alice", work, reconnect_delay=0.5)
    cut(nodes[0], client)
    wait_for(lambda: client.reconnecting, 10, "the client to notice")
    listener = Streams()
    job = call(client.loop, lambda: jobs.submit(argv=["echo", "later"], listener=listener))
    reconnected(client)
    wait_for(lambda: job.finished, 20, "the job to finish")
    assert job.exit_code == 0 and bytes(listener.out[1]) == b"later\n"


def test_giving_up_reconnecting_fails_the_jobs(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(1)
    client, jobs = connect(mesh, nodes[0], "alice", work)
    listener = Streams()
    job = call(client.loop, lambda: jobs.submit(shell="sleep 30", listener=listener))
    wait_for(lambda: job.runs, 10, "the job to be accepted")
    client.config.reconnect = False                  # as after --reconnect-for ran out
    cut(nodes[0], client)
    wait_for(lambda: job.finished, 10, "the job to fail")
    (run,) = job.runs.values()
    assert run.state == "failed" and run.lost and "lost the connection" in run.error


# -- a build survives its client's connection dropping ---------------------------------


class Lines:
    """A build reporter that keeps what a user would see."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, int, str]] = []
        self.result: tuple[bool, list[ActionRun]] | None = None

    def actionset_started(self, actionset, runs) -> None:
        pass

    def action_changed(self, run: ActionRun) -> None:
        pass

    def line(self, run: ActionRun, stream: int, text: str) -> None:
        self.lines.append((run.name, stream, text))

    def actionset_finished(self, actionset, runs) -> None:
        pass

    def build_finished(self, ok: bool, failed: list[ActionRun]) -> None:
        self.result = (ok, failed)


def test_a_build_survives_its_connection_dropping_without_running_anything_twice(
        mesh: Mesh, work: Path, tmp_path: Path) -> None:
    nodes = mesh.chain(3)
    client, jobs = connect(mesh, nodes[0], "alice", work, nodes[1], reconnect_delay=0.4)
    count = tmp_path / "count"
    (work / "seed.txt").write_text("seed\n")
    compile_ = "".join(f"\tremote-sh -c 'echo {x} >> {count}; sleep 0.5; echo made {x}; "
                       f"cat seed.txt > {x}.o; echo {x} >> {x}.o'\n\t\trequires seed.txt\n"
                       for x in "abcd")
    text = (f"compile:\n{compile_}"
            f"link:\n\tremote-sh -c 'echo link >> {count}; cat a.o b.o c.o d.o > program; "
            f"echo linked'\n\t\trequires a.o b.o c.o d.o\n"
            f"check:\n\tcat program\n")
    rakefile = parse(text, "Rakefile")
    view = Lines()
    codes: list[int] = []
    build = Build(rakefile, jobs, client.loop, work, view, done=codes.append)
    call(client.loop, build.start)
    wait_for(lambda: len(counted(count)) == 4, 15, "all four compiles to start")
    cut(nodes[0], client)                     # the client comes back through s2
    reconnected(client)
    wait_for(lambda: codes, 30, "the build to finish")
    assert codes == [0], view.lines
    assert sorted(counted(count)) == ["a", "b", "c", "d", "link"]     # each action once
    assert (work / "program").read_text() == "".join(f"seed\n{x}\n" for x in "abcd")
    said = [(name, text) for name, stream, text in view.lines if stream == 1]
    for i, x in enumerate("abcd", 1):
        assert said.count((f"compile#{i}", f"made {x}")) == 1
    assert said.count(("link#1", "linked")) == 1
    assert ("check#1", "seed") in said
    for node in nodes:
        wait_for(lambda node=node: kept(node) == 0, 10, f"{node.name} to drop the results")


# -- expiry and restarts ------------------------------------------------------------------


def test_results_nobody_collects_expire(mesh: Mesh, work: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="crc.jobs.service")
    nodes = mesh.chain(1, result_ttl=0.5)
    client, jobs = connect(mesh, nodes[0], "alice", work)
    jobs._send_acks = lambda: None                     # this client never acknowledges
    listener = Streams()
    job = call(client.loop, lambda: jobs.submit(shell="echo kept; echo file > out.txt",
                                                listener=listener))
    wait_for(lambda: job.finished, 10, "the job to finish")
    (run,) = job.runs.values()
    (produced,) = run.files
    assert kept(nodes[0]) == 1 and nodes[0].jobs.store.has(produced.sha)
    wait_for(lambda: kept(nodes[0]) == 0, 10, "the result to expire")
    wait_for(lambda: result_files(nodes[0]) == [], 10, "its files to be deleted")
    assert not nodes[0].jobs.store.has(produced.sha)
    assert f"the result of job {run.id} (client {client.id}) expired unclaimed" in caplog.text
    # Asking for it now is answered plainly.
    again = call(client.loop, lambda: jobs.fetch(run.id + "-again", nodes[0].server.id))
    wait_for(lambda: again.finished, 10, "the answer about an unknown job")
    (gone,) = again.runs.values()
    assert gone.state == "failed" and "unknown job" in gone.error


def test_a_restarted_server_still_hands_out_finished_results(
        mesh: Mesh, work: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = mesh.add("s1", server_options={"id": 7001}, state_dir=state)
    mesh.wait_converged()
    client, jobs = connect(mesh, first, "alice", work)
    jobs._send_acks = lambda: None
    job = call(client.loop, lambda: jobs.submit(
        shell="echo out; echo err >&2; echo made > made.txt; exit 3"))
    wait_for(lambda: job.finished, 10, "the job to finish")
    (run,) = job.runs.values()
    assert run.exit == 3 and (work / "made.txt").exists()
    (work / "made.txt").unlink()
    client.config.reconnect = False
    first.kill()
    mesh.nodes.remove(first)
    second = mesh.add("s1-restarted", server_options={"id": 7001}, state_dir=state)
    assert call(second.server.loop, lambda: list(second.jobs.results.finished)) == [run.id]
    # The same client id, in a new process for all the server knows.
    config = dict(id=client.id)
    client2, jobs2 = connect(mesh, second, "alice", work, **config)
    listener = Streams()
    again = call(client2.loop, lambda: jobs2.fetch(run.id, 7001, listener=listener))
    wait_for(lambda: again.finished, 10, "the kept result to be fetched")
    (fetched,) = again.runs.values()
    assert (fetched.state, fetched.exit) == ("done", 3)
    assert (bytes(listener.out[1]), bytes(listener.out[2])) == (b"out\n", b"err\n")
    assert (work / "made.txt").read_text() == "made\n"
    wait_for(lambda: kept(second) == 0, 10, "the acknowledged result to go")


def test_a_run_sent_twice_by_the_same_client_runs_once(mesh: Mesh, work: Path,
                                                       tmp_path: Path) -> None:
    nodes = mesh.chain(2)
    client, jobs = connect(mesh, nodes[0], "alice", work)
    count = tmp_path / "count"
    job = call(client.loop, lambda: jobs.submit(shell=f"echo ran >> {count}", on="s2"))
    wait_for(lambda: job.finished, 10, "the job to finish")
    (run,) = job.runs.values()
    # The same SUBMIT once more (as after a reconnect): answered, not run.
    again = Job(job.id, job.label, accepted=False)
    jobs.jobs[job.id] = again
    header = {"job": job.id, "shell": f"echo ran >> {count}", "on": "s2", "files": []}
    call(client.loop, lambda: client.send_extension(frame(Kind.SUBMIT, client.id, 0, header)))
    wait_for(lambda: again.accepted, 10, "the entry to answer")
    assert [r.id for r in again.runs.values()] == [run.id]
    assert counted(count) == ["ran"]
    assert call(nodes[1].server.loop, lambda: sum(nodes[1].jobs.origins.values())) == 1


# -- job processes die with a killed server ------------------------------------------------

_SERVER_STANDIN = """
import sys
from crc.net import EventLoop
from crc.jobs.process import ChildProcess, GroupReaper
loop = EventLoop()
reaper = GroupReaper(loop, "standin")
reaper.ensure()
def out(stream, data):
    sys.stdout.write(data.decode()); sys.stdout.flush()
ChildProcess(loop, ["sh", "-c", "sleep 60 & a=$!; setsid sleep 61 & echo $$ $a $!; sleep 60"],
             "/", on_output=out, on_exit=lambda code: None, reaper=reaper)
loop.run()
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and pidfds are Linux")
def test_a_killed_server_takes_its_job_processes_with_it() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _SERVER_STANDIN], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        shell, background, escaped = map(int, proc.stdout.readline().split())
        assert _alive(shell) and _alive(background) and _alive(escaped)
        wait_for(lambda: os.getsid(escaped) != os.getsid(shell), 10,
                 "the escapee to leave the job's session")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_for(lambda: not _alive(shell), 10, "the job's shell to die with its server")
        wait_for(lambda: not _alive(background), 10, "what the job started to die too")
        wait_for(lambda: not _alive(escaped), 10, "what left the job's group to die too")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_one_unreadable_entry_in_the_middle_loses_only_itself(tmp_path: Path) -> None:
    """A bad entry between good ones (a flipped byte, a disk error) is
    skipped; the results after it are kept, not dropped with it."""
    loop = EventLoop()
    root = tmp_path / "results"
    first = results.ResultStore(root, Sweeper(loop, root / "trash"))
    assert first.load() == 0
    for i in range(3):
        record = first.new(f"job.{i}", 7, 1, f"label {i}")
        first.append(record, 1, f"out {i}\n".encode())
        first.finish(record, Kind.DONE, {"id": record.id, "exit": 0})
    middle = first.finished["job.1"].at
    first.close()
    data = bytearray((root / "journal").read_bytes())
    header_start = data.rindex(b'{"op"', 0, middle)
    data[header_start:header_start + 5] = b"{\xff\xfe\x00#"   # its header, garbled
    (root / "journal").write_bytes(bytes(data))
    second = results.ResultStore(root, Sweeper(loop, root / "trash"))
    assert second.load() == 2
    assert sorted(second.finished) == ["job.0", "job.2"]
    assert second.read(second.finished["job.2"], 1, 0, 100) == b"out 2\n"
    second.close()
