"""Jobs end to end on in-process meshes over real sockets."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from crc.jobs import transfer
from crc.client.jobs.engine import Job, JobClient, JobError
from crc.jobs.wire import Kind, frame

from .meshkit import Mesh, call, wait_for


class Recorder:
    """Collects job events with the time they arrived."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str, object]] = []

    def __call__(self, job: Job, run, event: str, data: object) -> None:
        self.events.append((time.monotonic(), run.id, event, data))

    def output(self, run_id: str | None = None) -> bytes:
        return b"".join(d[1] for _, rid, ev, d in self.events
                        if ev == "output" and (run_id is None or rid == run_id))


def submit(client, jobs: JobClient, **kw) -> tuple[Job, Recorder]:
    rec = Recorder()
    job = call(client.loop, lambda: jobs.submit(listener=rec, **kw))
    return job, rec


def finished(job: Job, timeout: float = 20.0) -> Job:
    wait_for(lambda: job.finished, timeout, f"job {job.id} ({job.label}) to finish")
    return job


def test_eight_jobs_over_four_idle_servers_land_two_per_server(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(4)
    client, jobs = mesh.client(nodes[0], "alice", work)
    submitted = [submit(client, jobs, shell="sleep 0.2")[0] for _ in range(8)]
    for job in submitted:
        finished(job)
    placed = Counter(run.name for job in submitted for run in job.runs.values())
    assert placed == {"s1": 2, "s2": 2, "s3": 2, "s4": 2}
    assert all(job.exit_code == 0 for job in submitted)


def test_output_streams_before_the_job_ends_and_exit_status_arrives(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(2)
    client, jobs = mesh.client(nodes[0], "alice", work)
    job, rec = submit(client, jobs, shell="echo first; sleep 1; echo second >&2; exit 3", on="s2")
    finished(job)
    (run,) = job.runs.values()
    assert (run.name, run.exit, job.exit_code) == ("s2", 3, 3)
    first = next(t for t, _, ev, d in rec.events if ev == "output" and d == (1, b"first\n"))
    done = next(t for t, _, ev, _ in rec.events if ev == "done")
    assert done - first > 0.5          # output came while the job was still running
    assert (2, b"second\n") in [d for _, _, ev, d in rec.events if ev == "output"]


def test_arguments_with_spaces_quotes_and_non_ascii_arrive_intact(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(2)
    client, jobs = mesh.client(nodes[0], "alice", work)
    args = ["a b", "'single'", '"double"', "$HOME", "héllo «wörld»", ""]
    job, rec = submit(client, jobs, argv=["python3", "-c", "import sys; print(sys.argv[1:])", *args])
    finished(job)
    assert rec.output().decode().strip() == repr(args)


def test_produced_files_come_back_with_their_executable_bit(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(3)
    client, jobs = mesh.client(nodes[0], "alice", work)
    (work / "in.txt").write_text("hello\n")
    (work / "same.txt").write_text("unchanged\n")
    job, _ = submit(client, jobs, on="s3", files=["in.txt", "same.txt"], shell=(
        "tr a-z A-Z < in.txt > out.txt; printf '#!/bin/sh\\necho ran\\n' > tool.sh; "
        "chmod 755 tool.sh; mkdir -p sub; echo deep > sub/deep.txt; echo more >> in.txt"))
    finished(job)
    (run,) = job.runs.values()
    assert sorted(f.name for f in run.files) == ["in.txt", "out.txt", "sub/deep.txt", "tool.sh"]
    assert (work / "out.txt").read_text() == "HELLO\n"
    assert (work / "in.txt").read_text() == "hello\nmore\n"
    assert (work / "sub" / "deep.txt").read_text() == "deep\n"
    assert os.access(work / "tool.sh", os.X_OK)
    assert not os.access(work / "out.txt", os.X_OK)


def test_produced_files_with_the_same_bytes_all_come_back(mesh: Mesh, work: Path) -> None:
    """Fetched files are moved out of the client's store into place, inline
    ones written straight there: two produced files with the same content
    (one fetch, two places; one inline copy, two places) both arrive."""
    nodes = mesh.chain(2)
    client, jobs = mesh.client(nodes[0], "alice", work)
    job, _ = submit(client, jobs, on="s2", shell=(
        "head -c 200000 /dev/zero | tr '\\0' x > big1; cp big1 big2; mkdir d; cp big1 d/big3; "
        "echo small > s1; cp s1 d/s2"))
    finished(job)
    assert job.exit_code == 0
    for name in ("big1", "big2", "d/big3"):
        assert (work / name).read_bytes() == b"x" * 200000, name
    for name in ("s1", "d/s2"):
        assert (work / name).read_bytes() == b"small\n", name
    big = hashlib.sha256(b"x" * 200000).hexdigest()
    assert not call(client.loop, lambda: jobs.store.has(big))     # (moved, not copied)
    assert not list(work.glob("**/.*.crc-tmp"))


def test_a_required_file_changed_between_jobs_is_sent_as_it_is_now(
        mesh: Mesh, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client remembers a required file's digest by its stat: a change
    of the same size, its modification time set back, is still seen (the
    change time moved)."""
    from crc.client.jobs import local_files
    monkeypatch.setattr(local_files, "FRESH", -1.0)    # every digest remembered
    nodes = mesh.chain(2)
    client, jobs = mesh.client(nodes[0], "alice", work)
    header = work / "h.h"
    header.write_text("#define V 1\n")
    os.utime(header, (1_000_000, 1_000_000))
    for expected in ("#define V 1\n", "#define V 2\n", "#define V 2\n"):
        before = header.stat().st_ctime_ns
        if expected != header.read_text():
            deadline = time.monotonic() + 10
            while header.stat().st_ctime_ns == before:  # (a new tick of the file clock)
                assert time.monotonic() < deadline
                header.write_text(expected)
                os.utime(header, (1_000_000, 1_000_000))    # same size, same mtime
        job, rec = submit(client, jobs, on="s2", files=["h.h"], shell="cat h.h")
        finished(job)
        assert job.exit_code == 0 and rec.output().decode() == expected
    assert len(jobs.local.digests) == 1


def test_five_mebibytes_across_three_hops_arrive_byte_identical(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(4)
    client, jobs = mesh.client(nodes[0], "alice", work)
    data = os.urandom(5 << 20)
    (work / "big.bin").write_bytes(data)
    job, rec = submit(client, jobs, on="s4", files=["big.bin"], shell="sha256sum big.bin")
    finished(job, 60)
    assert rec.output().split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_a_shared_file_crosses_the_client_link_once(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(3)
    client, jobs = mesh.client(nodes[0], "alice", work)
    header = os.urandom(1 << 20)
    (work / "common.h").write_bytes(header)
    for i in range(3):
        (work / f"f{i}.c").write_text(f"int f{i};\n")
    submitted = [submit(client, jobs, on=f"s{i + 1}", files=["common.h", f"f{i}.c"],
                        shell="cat common.h f*.c | wc -c")[0] for i in range(3)]
    for job in submitted:
        finished(job, 30)
        assert job.exit_code == 0
    # The header left the client once; relays served the other servers. (The
    # small sources rode inside their SUBMITs.)
    assert jobs.transfers.bytes_served == len(header)
    assert jobs.inlined_bytes == sum(len(f"int f{i};\n") for i in range(3))


def test_cancel_kills_the_whole_process_group(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(2)
    client, jobs = mesh.client(nodes[0], "alice", work)
    job, rec = submit(client, jobs, on="s2", shell="sleep 60 & echo $!; sleep 60")
    wait_for(lambda: rec.output(), 10, "the job to print its child's pid")
    child = int(rec.output().split()[0])
    call(client.loop, lambda: jobs.cancel(job.id))
    finished(job)
    (run,) = job.runs.values()
    assert run.error == "cancelled"
    wait_for(lambda: not _alive(child), 5, "the background child to die")


def test_a_client_leaving_cancels_a_job_not_yet_accepted(mesh: Mesh, work: Path) -> None:
    """A batch client signalled right after sending a job (its run may be
    running while the ACCEPTED is on its way back) cancels it all the same."""
    nodes = mesh.chain(2)
    client, jobs = mesh.client(nodes[0], "alice", work)
    rec = Recorder()

    def submit_and_leave() -> Job:
        job = jobs.submit(listener=rec, shell="sleep 60", on="s2")
        assert job.sent and not job.accepted
        jobs.cancel_unfinished()
        return job
    job = call(client.loop, submit_and_leave)
    finished(job)
    (run,) = job.runs.values()
    assert run.error == "cancelled"


def test_another_client_cannot_cancel_a_run(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(2)
    client, jobs = mesh.client(nodes[0], "alice", work)
    mallory, _ = mesh.client(nodes[0], "mallory", work)
    job, rec = submit(client, jobs, on="s2", shell="echo running; sleep 60")
    wait_for(lambda: rec.output(), 10, "the job to start")
    (run_id,) = job.runs
    # Addressed straight to the executing server, under mallory's own id.
    call(mallory.loop, lambda: mallory.send_extension(
        frame(Kind.CANCEL, mallory.id, nodes[1].server.id, {"id": run_id})))
    executor = nodes[1].jobs
    wait_for(lambda: call(nodes[1].server.loop, lambda: executor.cancels_refused), 10,
             "the executing server to refuse mallory's CANCEL")
    assert not job.finished
    call(client.loop, lambda: jobs.cancel(job.id))     # alice still may
    finished(job)
    assert job.runs[run_id].error == "cancelled"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_server_killed_mid_job_fails_the_job_within_seconds(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(3)
    client, jobs = mesh.client(nodes[0], "alice", work)
    job, rec = submit(client, jobs, on="s3", shell="echo started; sleep 60")
    wait_for(lambda: rec.output(), 10, "the job to start")
    killed_at = time.monotonic()
    nodes[2].kill()
    finished(job, 10)
    (run,) = job.runs.values()
    assert run.state == "failed" and "left the mesh" in run.error and run.lost
    assert time.monotonic() - killed_at < 5


def test_stdin_is_forwarded(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(2)
    client, jobs = mesh.client(nodes[0], "alice", work)
    job, rec = submit(client, jobs, on="s2", stdin=True, argv=["sort"])
    wait_for(lambda: job.runs, 10, "the job to be accepted")
    (run_id,) = job.runs
    call(client.loop, lambda: jobs.send_input(run_id, b"pear\napple\n"))
    call(client.loop, lambda: jobs.send_input(run_id, b"fig\n", eof=True))
    finished(job)
    assert rec.output() == b"apple\nfig\npear\n"


def test_runall_runs_once_on_every_server(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(3)
    client, jobs = mesh.client(nodes[1], "alice", work)
    job, rec = submit(client, jobs, everywhere=True, argv=["echo", "hi"])
    finished(job)
    assert sorted(r.name for r in job.runs.values()) == ["s1", "s2", "s3"]
    assert rec.output() == b"hi\n" * 3


def test_unknown_pinned_server_is_a_clear_error(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(2)
    client, jobs = mesh.client(nodes[0], "alice", work)
    job, _ = submit(client, jobs, on="nowhere", shell="true")
    finished(job)
    assert job.error == "no server named 'nowhere' (known: s1, s2)"


# -- limits and safety ---------------------------------------------------------------


def test_path_traversal_is_refused_by_client_and_server(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(2)
    client, jobs = mesh.client(nodes[0], "alice", work)
    with pytest.raises(JobError, match="leaves the job directory"):
        call(client.loop, lambda: jobs.submit(shell="true", files=["../secret"]))
    with pytest.raises(JobError, match="absolute"):
        call(client.loop, lambda: jobs.submit(shell="true", files=["/etc/passwd"]))
    # A hostile client bypassing its own checks: the server refuses, nothing runs.
    marker = work / "ran"
    rec = Recorder()
    job = Job("evil.1", "evil", rec)
    jobs.jobs[job.id] = job
    call(client.loop, lambda: client.send_extension(frame(Kind.SUBMIT, client.id, 0, {
        "job": "evil.1", "shell": f"touch {marker}",
        "files": [{"name": "../../x", "sha": "0" * 64, "size": 1, "mode": 420}]})))
    finished(job)
    assert "leaves the job directory" in job.error
    assert not marker.exists()


def test_symlink_pointing_out_is_not_returned(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(2)
    client, jobs = mesh.client(nodes[0], "alice", work)
    job, rec = submit(client, jobs, on="s2", shell="ln -s /etc/passwd leak; echo ok > fine.txt")
    finished(job)
    (run,) = job.runs.values()
    assert [f.name for f in run.files] == ["fine.txt"]
    assert not (work / "leak").exists()
    assert b"leak is a symlink pointing outside the job directory" in rec.output()


def test_output_cap_and_timeout_give_clear_errors(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(1, max_output=100_000)
    client, jobs = mesh.client(nodes[0], "alice", work)
    noisy, _ = submit(client, jobs, shell="yes")
    slow, _ = submit(client, jobs, shell="sleep 30", timeout=0.5)
    finished(noisy)
    finished(slow)
    assert list(noisy.runs.values())[0].error == "output exceeds 100000 bytes; job killed"
    assert list(slow.runs.values())[0].error == "timed out after 0.5 s; job killed"


def test_oversized_file_is_refused(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(1, max_file=1000)
    client, jobs = mesh.client(nodes[0], "alice", work)
    (work / "big").write_bytes(b"x" * 1001)
    job, _ = submit(client, jobs, shell="true", files=["big"])
    finished(job)
    assert job.error == "file 'big' is 1001 bytes; the limit is 1000"


def test_job_directories_are_cleaned_up(mesh: Mesh, work: Path, tmp_path: Path) -> None:
    nodes = mesh.chain(1)
    client, jobs = mesh.client(nodes[0], "alice", work)
    (work / "a.txt").write_text("a")
    for job in [submit(client, jobs, shell="cp a.txt b.txt", files=["a.txt"])[0] for _ in range(3)]:
        finished(job)
    # What stays is the pool of directories kept for the next jobs (at most
    # its bound), each holding only its last job's unchanged input copies.
    pool = nodes[0].jobs.executor.plain_pool
    idle = call(nodes[0].server.loop, lambda: [d.path for d in pool.idle])
    left = sorted((tmp_path / "servers" / "s1" / "jobs").iterdir())
    assert left == sorted(idle) and len(left) <= pool.keep
    for folder in left:
        assert [p.name for p in folder.rglob("*")] in ([], ["a.txt"])
    call(nodes[0].server.loop, nodes[0].jobs.executor.close)
    assert list((tmp_path / "servers" / "s1" / "jobs").iterdir()) == []


def test_a_job_directory_something_still_runs_in_is_not_used_again(
        mesh: Mesh, work: Path) -> None:
    """A job that leaves a process behind (in its process group) does not
    hand its directory to the next job: that process could still change it."""
    nodes = mesh.chain(1)
    client, jobs = mesh.client(nodes[0], "alice", work)
    pool = nodes[0].jobs.executor.plain_pool
    job, _ = submit(client, jobs, shell="sleep 60 >/dev/null 2>&1 & echo $! > pid")
    finished(job)
    pid = int((work / "pid").read_text())
    try:
        assert job.exit_code == 0
        assert call(nodes[0].server.loop, lambda: list(pool.idle)) == []
        job, _ = submit(client, jobs, shell="true")
        finished(job)
        assert len(call(nodes[0].server.loop, lambda: list(pool.idle))) == 1
    finally:
        os.kill(pid, signal.SIGKILL)


def test_compressible_files_cross_compressed_and_arrive_intact(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(3)
    client, jobs = mesh.client(nodes[0], "alice", work)
    text = "".join(f"int function_{i}(int x) {{ return x * {i} + 1; }}\n"
                   for i in range(40_000)).encode()          # about 1.8 MB of C
    (work / "big.c").write_bytes(text)
    sent_before = client.conn.bytes_out
    job, rec = submit(client, jobs, on="s3", files=["big.c"], shell="sha256sum big.c; cp big.c copy.c")
    finished(job, 30)
    assert rec.output().split()[0].decode() == hashlib.sha256(text).hexdigest()
    assert (work / "copy.c").read_bytes() == text
    # The file left the client in well under half its size.
    assert client.conn.bytes_out - sent_before < len(text) / 2


def test_large_files_pass_relays_untouched_and_small_ones_are_cached(
        mesh: Mesh, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "RELAY_CACHE_MAX", 1 << 20)
    nodes = mesh.chain(3)
    client, jobs = mesh.client(nodes[0], "alice", work)
    large, small = os.urandom((2 << 20) + 5), os.urandom(300_000)
    (work / "large.bin").write_bytes(large)
    (work / "small.bin").write_bytes(small)
    job, rec = submit(client, jobs, on="s3", files=["large.bin", "small.bin"],
                      shell="sha256sum large.bin small.bin")
    finished(job, 60)
    assert job.exit_code == 0
    sums = dict(line.split()[::-1] for line in rec.output().decode().splitlines())
    assert sums == {"large.bin": hashlib.sha256(large).hexdigest(),
                    "small.bin": hashlib.sha256(small).hexdigest()}
    relay, executor = nodes[1].jobs.store, nodes[2].jobs.store
    assert not relay.has(hashlib.sha256(large).hexdigest())
    assert relay.has(hashlib.sha256(small).hexdigest())
    assert executor.has(hashlib.sha256(large).hexdigest())


def test_a_job_editing_a_linked_input_in_place_does_not_spoil_the_store(
        mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(2)
    client, jobs = mesh.client(nodes[0], "alice", work)
    data = os.urandom(100_000)
    (work / "data.bin").write_bytes(data)
    original = hashlib.sha256(data).hexdigest()
    job, _ = submit(client, jobs, on="s2", files=["data.bin"], shell="echo more >> data.bin")
    finished(job, 30)
    assert job.exit_code == 0
    # The edited file came back, and the server forgot the blob it had linked.
    assert (work / "data.bin").read_bytes() == data + b"more\n"
    assert not nodes[1].jobs.store.has(original)
    (work / "data.bin").write_bytes(data)
    job, rec = submit(client, jobs, on="s2", files=["data.bin"], shell="sha256sum data.bin")
    finished(job, 30)
    assert rec.output().split()[0].decode() == original


def test_jobs_sharing_an_input_see_it_intact_and_never_return_it(mesh: Mesh, work: Path) -> None:
    """One job at a time links a stored blob, the others copy it; a finished
    job's link is dropped before its directory is swept (the sweep would move
    the blob's ctime under the next job's feet and make it look edited)."""
    nodes = mesh.chain(2, slots=3)
    client, jobs = mesh.client(nodes[0], "alice", work)
    (work / "common.h").write_bytes(b"#define WIDTH 80\n")
    want = hashlib.sha256(b"#define WIDTH 80\n").hexdigest()
    for round_ in range(3):
        batch = [submit(client, jobs, on="s2", files=["common.h"],
                        shell="sleep 0.3; sha256sum common.h") for _ in range(3)]
        for job, rec in batch:
            finished(job, 30)
            (run,) = job.runs.values()
            assert job.exit_code == 0 and run.files == [], (round_, run)
            assert rec.output().split()[0].decode() == want
        executor = nodes[1].jobs
        wait_for(lambda: call(nodes[1].server.loop, lambda: executor.linked == {}), 10,
                 "the links to be released")
        assert executor.store.path(want).stat().st_nlink == 1
        assert executor.store.has(want)


def test_a_job_cannot_start_on_a_blob_another_job_is_editing_in_place(
        mesh: Mesh, work: Path, tmp_path: Path) -> None:
    nodes = mesh.chain(2, slots=2)
    client, jobs = mesh.client(nodes[0], "alice", work)
    (work / "data.txt").write_bytes(b"original\n")
    go = tmp_path / "go"
    editor, editing = submit(client, jobs, on="s2", files=["data.txt"],
                             shell=f"echo more >> data.txt; echo edited; "
                                   f"while [ ! -e {go} ]; do sleep 0.05; done")
    wait_for(lambda: b"edited" in editing.output(), 20, "the first job to edit its input")
    reader, _ = submit(client, jobs, on="s2", files=["data.txt"], shell="cat data.txt")
    finished(reader, 30)
    (run,) = reader.runs.values()
    assert "changed in place" in run.error and reader.exit_code != 0
    go.touch()
    finished(editor, 30)
    assert (work / "data.txt").read_bytes() == b"original\nmore\n"
    assert not nodes[1].jobs.store.has(hashlib.sha256(b"original\n").hexdigest())


def test_standard_input_past_the_window_stops_the_job_not_the_server(
        mesh: Mesh, tmp_path: Path) -> None:
    """A client that ignores INPUT_ACK cannot make the server hold its input."""
    from crc.jobs.wire import STDIN_WINDOW, Kind, frame
    (node,) = mesh.chain(1)
    client, jobs = mesh.client(node, "flooder", tmp_path)
    job, _ = submit(client, jobs, argv=["sleep", "30"], stdin=True)
    wait_for(lambda: call(client.loop, lambda: bool(job.runs)), 10, "the job to be accepted")
    run_id = next(iter(job.runs))
    chunk = b"x" * (1 << 20)

    def flood() -> None:
        for _ in range(3 * STDIN_WINDOW // len(chunk)):
            client.send_extension(frame(Kind.INPUT, client.id, job.runs[run_id].server,
                                        {"id": run_id, "eof": False}, chunk))
    call(client.loop, flood)
    finished(job, 10)
    assert "beyond the 1048576 byte window" in job.runs[run_id].error
    assert call(node.server.loop, lambda: client.id in node.server.links)


def test_a_submit_that_cannot_be_passed_on_is_refused_before_it_is_accepted(
        mesh: Mesh, tmp_path: Path) -> None:
    """A lone surrogate is valid JSON but not UTF-8: refused with a reason,
    no quota slot taken, the client kept."""
    import json
    from crc.jobs.wire import Kind, unpack
    from crc.protocol import Extension
    (node,) = mesh.chain(1, max_jobs_per_client=1)
    client, jobs = mesh.client(node, "odd", tmp_path)
    answers: list[tuple[int, dict]] = []
    for kind in (Kind.FAILED, Kind.ACCEPTED):
        call(client.loop, lambda kind=kind: client.extension_handlers.__setitem__(
            kind, lambda msg, kind=kind: answers.append((kind, unpack(msg.payload)[0]))))
    # JSON may escape a lone surrogate (\ud800); our own encoder never would.
    head = json.dumps({"job": "odd.1", "files": [], "stdin": False,
                       "argv": ["echo", "\ud800"]}).encode()
    call(client.loop, lambda: client.send_extension(Extension(
        Kind.SUBMIT, client.id, 0, 0, len(head).to_bytes(4, "big") + head)))
    wait_for(lambda: answers, 10, "the answer")
    assert answers == [(Kind.FAILED, {"id": "odd.1",
                                      "error": "argument 2 is not valid UTF-8"})]
    assert call(node.server.loop, lambda: client.id in node.server.links)
    assert call(node.server.loop, lambda: not node.jobs.dispatched)


def test_a_job_frame_with_a_run_id_that_is_not_text_is_a_protocol_error(
        mesh: Mesh, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from crc.jobs.wire import Kind, frame
    (node,) = mesh.chain(1)
    client, jobs = mesh.client(node, "listy", tmp_path)
    call(client.loop, lambda: client.send_extension(frame(Kind.INPUT, client.id, node.server.id,
                                                          {"id": [], "eof": True})))
    wait_for(lambda: call(node.server.loop, lambda: client.id not in node.server.links), 10,
             "the server to drop the client")
    assert "protocol error: job frame without a text 'id'" in caplog.text
    assert "internal error" not in caplog.text


def test_small_files_ride_in_the_submission_and_the_result(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(3)
    client, jobs = mesh.client(nodes[0], "alice", work)
    (work / "in.txt").write_text("hello " * 1000)
    job, rec = submit(client, jobs, on="s3", files=["in.txt"],
                      shell="tr a-z A-Z < in.txt > out.txt")
    finished(job)
    assert job.exit_code == 0
    assert (work / "out.txt").read_text() == "HELLO " * 1000
    # Neither file was fetched: the input came with the SUBMIT, the output
    # with the DONE.
    assert jobs.transfers.bytes_served == 0
    assert jobs.inlined_bytes == 6000
    assert call(client.loop, lambda: jobs.transfers.bytes_fetched) == 0


def test_an_inline_file_that_is_not_what_it_says_is_fetched_instead(mesh: Mesh,
                                                                    work: Path) -> None:
    nodes = mesh.chain(2)
    client, jobs = mesh.client(nodes[0], "alice", work)
    (work / "in.txt").write_text("the real bytes\n")
    real = jobs._inline

    def lying(refs):                       # a client whose inline copy is wrong
        entries, body = real(refs)
        return entries, body.replace(b"real", b"fake")

    jobs._inline = lying
    job, rec = submit(client, jobs, on="s2", files=["in.txt"], shell="cat in.txt")
    finished(job)
    assert job.exit_code == 0 and rec.output() == b"the real bytes\n"
    assert jobs.transfers.bytes_served == len("the real bytes\n")


def test_a_malformed_inline_list_is_refused_clearly_and_hurts_no_one(mesh: Mesh,
                                                                     work: Path) -> None:
    nodes = mesh.chain(2)
    client, jobs = mesh.client(nodes[0], "alice", work)
    (work / "in.txt").write_text("x\n")
    jobs._inline = lambda refs: ([{"sha": "0" * 64, "n": 999}], b"short")
    job, rec = submit(client, jobs, on="s2", files=["in.txt"], shell="cat in.txt")
    finished(job)
    assert "inline files exceed the frame" in job.error
    jobs._inline = lambda refs: ([], b"")
    job, rec = submit(client, jobs, on="s2", files=["in.txt"], shell="cat in.txt")
    finished(job)
    assert job.exit_code == 0 and rec.output() == b"x\n"
