"""The compile cache's pure parts: where a key lives, what a key is made of,
and entries whose objects are gone."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from crc.jobs.store import BlobStore
from crc.server.jobs.cache import CompileCache, cache_key, home
from crc.server.jobs.executor import rooted_problem

HEADER = {"compiler": "c" * 20, "cache": True, "argv": ["gcc", "-O2", "-c", "a.c"],
          "files": [{"name": "a.c", "sha": "1" * 64, "size": 10, "mode": 0o644}],
          "debug_dir": None}


def test_a_key_is_made_only_for_a_compile_that_asks() -> None:
    assert cache_key(HEADER) is not None
    assert cache_key({**HEADER, "cache": False}) is None
    assert cache_key({k: v for k, v in HEADER.items() if k != "compiler"}) is None


@pytest.mark.parametrize("change", [
    {"compiler": "d" * 20}, {"argv": ["gcc", "-O1", "-c", "a.c"]}, {"debug_dir": "/src"},
    {"files": [{"name": "a.c", "sha": "2" * 64, "size": 10, "mode": 0o644}]},
    {"files": [{"name": "b.c", "sha": "1" * 64, "size": 10, "mode": 0o644}]},
    {"files": [{"name": "a.c", "sha": "1" * 64, "size": 10, "mode": 0o755}]},
    {"rooted": "/home/me/build"},
], ids=["compiler", "argv", "debug dir", "content", "name", "mode", "rooted"])
def test_everything_that_can_change_the_object_changes_the_key(change: dict) -> None:
    assert cache_key({**HEADER, **change}) != cache_key(HEADER)


def test_the_key_ignores_what_cannot_change_the_object() -> None:
    assert cache_key({**HEADER, "job": "1.x.2", "timeout": 30}) == cache_key(HEADER)


def test_keys_spread_over_servers_and_a_leaving_server_moves_only_its_own() -> None:
    servers = [11, 22, 33]
    keys = [f"{i:064x}" for i in range(3000)]
    placed = {k: home(k, servers) for k in keys}
    counts = Counter(placed.values())
    assert set(counts) == set(servers) and min(counts.values()) > 800
    after = {k: home(k, [11, 22]) for k in keys}
    assert all(after[k] == placed[k] for k in keys if placed[k] != 33)
    assert home("ab" * 32, []) is None


def test_an_entry_whose_object_was_evicted_is_a_miss_and_goes(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    obj = tmp_path / "o"
    obj.write_bytes(b"object")
    sha, size = store.add_file(obj)
    cache = CompileCache(tmp_path / "cache", store)
    files = [{"name": "out.o", "sha": sha, "size": size, "mode": 0o644}]
    cache.remember("k" * 1 + "0" * 63, files)
    assert cache.lookup("k" + "0" * 63) == files
    store.forget(sha)
    assert cache.lookup("k" + "0" * 63) is None
    assert (cache.hits, cache.misses, cache.stored) == (1, 1, 1)
    cache.close()
    assert "k" + "0" * 63 not in CompileCache(tmp_path / "cache", store)._order   # gone for good


def test_the_oldest_entries_go_past_the_limit(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    obj = tmp_path / "o"
    obj.write_bytes(b"object")
    sha, size = store.add_file(obj)
    cache = CompileCache(tmp_path / "cache", store, max_entries=3)
    files = [{"name": "out.o", "sha": sha, "size": size, "mode": 0o644}]
    keys = [f"{i:064x}" for i in range(5)]
    for k in keys[:3]:
        cache.remember(k, files)
    assert cache.lookup(keys[0]) == files          # used: now the newest
    for k in keys[3:]:
        cache.remember(k, files)
    assert cache.lookup(keys[0]) == files
    assert cache.lookup(keys[1]) is None and cache.lookup(keys[2]) is None
    reopened = CompileCache(tmp_path / "cache", store, max_entries=3)
    assert sorted(reopened._order) == sorted([keys[0], keys[3], keys[4]])


@pytest.mark.parametrize("rooted,problem", [
    ("/home/me/build", None), ("/", None),
    ("home/me", "absolute, plain"), ("/a/../b", "absolute, plain"), ("/a/./b", "absolute, plain"),
    ("/a\0b", "absolute, plain"), (17, "absolute, plain"), ("/" + "x" * 5000, "absolute, plain"),
])
def test_a_shipped_compiles_directory_must_be_absolute_and_plain(rooted, problem) -> None:
    found = rooted_problem({**HEADER, "rooted": rooted})
    assert (found is None) if problem is None else (problem in found)
    assert "only for compiles" in rooted_problem({"rooted": "/x", "argv": ["sh"]})


def test_the_compiler_gets_pipe_first_and_not_with_save_temps() -> None:
    """The server's compiles join their stages by pipes: ``-pipe`` goes right
    after the compiler (never after a ``--``), and not with -save-temps."""
    from types import SimpleNamespace

    from crc.server.jobs.service import JobService
    service = SimpleNamespace(compilers={"id1": "/usr/bin/gcc"})
    header = {"compiler": "id1"}
    assert JobService.with_compiler(service, header, ["gcc", "-c", "--", "a.c"]) == \
        ["/usr/bin/gcc", "-pipe", "-c", "--", "a.c"]
    for flag in ("-save-temps", "--save-temps", "-save-temps=obj"):
        assert JobService.with_compiler(service, header, ["gcc", flag, "-c", "a.c"]) == \
            ["/usr/bin/gcc", flag, "-c", "a.c"]


def _cache_with_object(tmp_path: Path, **kw) -> tuple[CompileCache, list[dict], BlobStore]:
    store = BlobStore(tmp_path / "blobs")
    obj = tmp_path / "o"
    obj.write_bytes(b"object")
    sha, size = store.add_file(obj)
    files = [{"name": "out.o", "sha": sha, "size": size, "mode": 0o644}]
    return CompileCache(tmp_path / "cache", store, **kw), files, store


def test_entries_are_lines_of_one_file_and_survive_a_restart(tmp_path: Path) -> None:
    cache, files, store = _cache_with_object(tmp_path)
    keys = [f"{i:064x}" for i in range(4)]
    for k in keys:
        cache.remember(k, files)
    cache.forget(keys[1])
    cache.close()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["entries.log"]  # no file each
    reopened = CompileCache(tmp_path / "cache", store)
    assert list(reopened._order) == [keys[0], keys[2], keys[3]]
    assert reopened.lookup(keys[2]) == files and reopened.lookup(keys[1]) is None


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path: Path) -> None:
    cache, files, store = _cache_with_object(tmp_path)
    cache.remember("a" * 64, files)
    cache.close()
    with open(tmp_path / "cache" / "entries.log", "ab") as f:
        f.write(b"b" * 40)                     # (the process died mid-write)
    reopened = CompileCache(tmp_path / "cache", store)
    assert list(reopened._order) == ["a" * 64]
    reopened.remember("c" * 64, files)         # the next line is whole again
    reopened.close()
    assert list(CompileCache(tmp_path / "cache", store)._order) == ["a" * 64, "c" * 64]


def test_the_file_is_rewritten_when_most_of_it_is_dead(tmp_path: Path) -> None:
    from crc.server.jobs import cache as module
    cache, files, store = _cache_with_object(tmp_path, max_entries=2)
    for i in range(module.SLACK + 50):
        cache.remember(f"{i:064x}", files)      # each past the second evicts one
    lines = (tmp_path / "cache" / "entries.log").read_text().splitlines()
    assert len(lines) <= 2 * 2 + module.SLACK + 1
    cache.close()
    reopened = CompileCache(tmp_path / "cache", store, max_entries=2)
    assert list(reopened._order) == [f"{i:064x}" for i in (module.SLACK + 48, module.SLACK + 49)]


def test_entries_of_the_one_file_each_layout_are_taken_over(tmp_path: Path) -> None:
    import json
    import os
    store = BlobStore(tmp_path / "blobs")
    obj = tmp_path / "o"
    obj.write_bytes(b"object")
    sha, size = store.add_file(obj)
    files = [{"name": "out.o", "sha": sha, "size": size, "mode": 0o644}]
    old, new = "1" * 64, "2" * 64
    files[0]["name"] = "two  spaces.o"         # (kept exactly)
    for n, key in enumerate((old, new)):
        path = tmp_path / "cache" / key[:2] / key
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(files, indent=1))
        os.utime(path, (1000 + n, 1000 + n))
    cache = CompileCache(tmp_path / "cache", store)
    assert list(cache._order) == [old, new]    # oldest first, as their times said
    assert cache.lookup(new) == files
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["entries.log"]


def test_a_line_written_in_part_is_not_glued_to_the_next(tmp_path: Path, monkeypatch) -> None:
    """A short write (a full disk) would join the next line to the partial
    one: the file is written again whole instead."""
    from crc.server.jobs import cache as module
    cache, files, store = _cache_with_object(tmp_path)
    real_write, cut = module.os.write, [True]

    def short_once(fd: int, data: bytes) -> int:
        if cut:
            cut.clear()
            return real_write(fd, data[:10])
        return real_write(fd, data)
    monkeypatch.setattr(module.os, "write", short_once)
    for key in ("a" * 64, "b" * 64, "c" * 64):
        cache.remember(key, files)
    cache.close()
    monkeypatch.undo()
    assert list(CompileCache(tmp_path / "cache", store)._order) == ["a" * 64, "b" * 64, "c" * 64]


def test_an_unreadable_file_is_not_replaced_by_an_empty_one(tmp_path: Path,
                                                            monkeypatch) -> None:
    """A read error (EIO) at start leaves the file as it is: this run's
    entries are appended, and a later start reads them all."""
    import builtins
    import errno
    from crc.server.jobs import cache as module
    cache, files, store = _cache_with_object(tmp_path)
    cache.remember("a" * 64, files)
    cache.close()

    def failing_open(path, mode="r", *args, **kwargs):
        if str(path).endswith("entries.log") and "r" in mode:
            raise OSError(errno.EIO, "Input/output error")
        return builtins.open(path, mode, *args, **kwargs)
    monkeypatch.setattr(module, "open", failing_open, raising=False)
    second = CompileCache(tmp_path / "cache", store)
    assert list(second._order) == []
    second.remember("b" * 64, files)
    second.close()
    monkeypatch.undo()
    assert list(CompileCache(tmp_path / "cache", store)._order) == ["a" * 64, "b" * 64]
