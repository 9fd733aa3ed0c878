"""meshcc's reading of compiler command lines, and the text that travels:
table-driven, no compiler run, no socket."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crc.cc.args import Local, Remote, expand_responses, plan, split_response
from crc.cc.direct import DirectCache
from crc.cc.source import remote_name, strip_builtins

LOCAL = [
    ("gcc -o prog main.o util.o", "not a compile"),
    ("gcc main.c -o prog", "not a compile"),
    ("gcc -E main.c", "-E"),
    ("gcc -S -c main.c", "-S"),
    ("gcc -M main.c", "-M"),
    ("gcc -MM -c main.c", "-MM"),
    ("gcc -fsyntax-only -c main.c", "-fsyntax-only"),
    ("gcc -c -", "standard input"),
    ("gcc -x c -c -", "standard input"),
    ("gcc -c a.c b.c", "more than one source"),
    ("gcc -c", "no source"),
    ("gcc -c a.s", "not a C or C++ source"),
    ("gcc -c lib.o", "not a C or C++ source"),
    ("gcc -x assembler -c a.s", "language assembler"),
    ("gcc -c @args.rsp", "response file"),
    ("gcc -c conftest.c", "probe"),
    ("gcc -c CMakeFiles/CMakeScratch/TryCompile-x/src.c", "probe"),
    ("gcc -c CMakeFiles/3.25.1/CompilerIdC/CMakeCCompilerId.c", "probe"),
    ("gcc -march=native -c a.c", "-march=native"),
    ("gcc -fprofile-use -c a.c", "-fprofile-use"),
    ("gcc -fprofile-generate -c a.c", "-fprofile-generate"),
    ("gcc --coverage -c a.c", "--coverage"),
    ("gcc -save-temps -c a.c", "-save-temps"),
    ("gcc -fplugin=x.so -c a.c", "-fplugin"),
    ("gcc -B/opt/x -c a.c", "-B"),
    ("gcc -specs=x.specs -c a.c", "-specs"),
    ("gcc -gsplit-dwarf -c a.c", "-gsplit-dwarf"),
    ("gcc -Wp,-MD,x.d -c a.c", "-Wp,"),
    ("gcc -Xpreprocessor -x -c a.c", "-Xpreprocessor"),
    ("gcc -c a.c -o", "-o without a file"),
    ("gcc -c a.c -o x.o -o y.o", "more than one -o"),
    ("gcc -c a.c -I", "-I without a value"),
    ("gcc --frobnicate -c a.c", "not one the mesh knows"),
    ("gcc -c a.c -o -", "not an object file"),
    ("gcc -v -c a.c", "-v"),
    ("gcc -u sym -c a.c", "-u"),
    ("", "no compiler"),
]


@pytest.mark.parametrize("line,why", LOCAL, ids=[c[0] or "empty" for c in LOCAL])
def test_what_stays_local_says_why(line: str, why: str) -> None:
    got = plan(line.split())
    assert isinstance(got, Local), got
    assert why in got.reason


def test_a_plain_compile_goes_remote_with_the_object_named_as_gcc_would() -> None:
    got = plan("gcc -O2 -c src/util.c".split())
    assert isinstance(got, Remote)
    assert (got.source, got.language, got.output, got.depfile) == ("src/util.c", "c", "util.o",
                                                                   None)
    assert got.preprocess == ["-O2", "-E", "-fdirectives-only", "src/util.c"]
    assert got.compile == ["-O2", "-c"]


def test_preprocessor_options_stay_here_and_compile_options_go_to_both() -> None:
    got = plan(["g++", "-Iinclude", "-I", "other", "-DX=1", "-D", "Y", "-UZ", "-isystem", "sys",
                "-include", "pre.h", "-std=c++17", "-O2", "-fPIC", "-Wall", "-c", "a.cpp",
                "-o", "build/a.o"])
    assert isinstance(got, Remote)
    assert got.language == "c++" and got.output == "build/a.o"
    assert got.compile == ["-std=c++17", "-O2", "-fPIC", "-Wall", "-c"]
    for word in ("-Iinclude", "other", "-DX=1", "Y", "-UZ", "sys", "pre.h"):
        assert word in got.preprocess and word not in got.compile


@pytest.mark.parametrize("line,depfile,added", [
    ("gcc -MD -c src/a.c -o build/a.o", "build/a.d", ["-MF", "build/a.d", "-MQ", "build/a.o"]),
    ("gcc -MMD -c a.c", "a.d", ["-MF", "a.d", "-MQ", "a.o"]),
    ("gcc -MMD -MF deps/a.dep -c a.c -o a.o", "deps/a.dep", ["-MQ", "a.o"]),
    ("gcc -MD -MT custom -c a.c -o a.o", "a.d", ["-MF", "a.d"]),
    ("gcc -MD -MFx.d -MQy -c a.c", "x.d", []),
])
def test_dependency_files_are_named_as_the_compile_would_name_them(
        line: str, depfile: str, added: list[str]) -> None:
    got = plan(line.split())
    assert isinstance(got, Remote)
    assert got.depfile == depfile
    tail = got.preprocess[:got.preprocess.index("-E")]
    if added:
        assert tail[-len(added):] == added
    else:
        assert tail == ["-MD", "-MFx.d", "-MQy"]        # nothing added to what was given
    assert not any(w.startswith("-M") for w in got.compile)


@pytest.mark.parametrize("line,debug", [
    ("gcc -g -c a.c", True), ("gcc -ggdb -c a.c", True), ("gcc -g3 -c a.c", True),
    ("gcc -g -g0 -c a.c", False), ("gcc -O2 -c a.c", False), ("gcc -gdwarf-4 -c a.c", True),
])
def test_debug_information_is_noticed(line: str, debug: bool) -> None:
    got = plan(line.split())
    assert isinstance(got, Remote) and got.debug is debug


def test_x_c_applies_to_a_source_with_another_suffix() -> None:
    got = plan("gcc -x c -c prog.txt".split())
    assert isinstance(got, Remote) and got.language == "c"
    assert got.compile[-2:] == ["-x", "c"]


def test_the_builtin_block_goes_and_everything_else_stays() -> None:
    text = (b'# 0 "a.c"\n# 0 "<built-in>"\n#define __STDC__ 1\n#define __GNUC__ 12\n'
            b'# 0 "<command-line>"\n#define X 1\n#undef Y\n# 1 "a.c"\n#define LOCAL 2\n'
            b'int x = X + LOCAL;\n')
    assert strip_builtins(text) == (b'# 0 "a.c"\n# 0 "<built-in>"\n# 0 "<command-line>"\n'
                                    b'#define X 1\n#undef Y\n# 1 "a.c"\n#define LOCAL 2\n'
                                    b'int x = X + LOCAL;\n')


@pytest.mark.parametrize("source,name", [
    ("a.c", "a.c"), ("src/a.c", "src/a.c"), ("/abs/src/a.c", "a.c"), ("../a.c", "a.c"),
    ("./a.c", "a.c"), ("src//a.c", "a.c"),
])
def test_the_remote_name_keeps_the_path_when_it_can(source: str, name: str) -> None:
    assert remote_name(source) == name


@pytest.mark.parametrize("text,words", [
    ("-O2 -c a.c", ["-O2", "-c", "a.c"]),
    ("  -DX='a b'\n-DY=\"c d\"\t-I\\ spaced ", ["-DX=a b", "-DY=c d", "-I spaced"]),
    ("'' \"\"", ["", ""]),
    ("a\\\"b 'it''s'", ['a"b', "its"]),
    ("", []),
])
def test_response_files_are_split_as_gcc_splits_them(text: str, words: list[str]) -> None:
    assert split_response(text) == words


def test_response_files_are_followed_nested_and_refused_when_they_cannot_be() -> None:
    files = {"outer.rsp": "-O2 @inner.rsp -c", "inner.rsp": "-Iinc 'a b.c'",
             "loop.rsp": "@loop.rsp"}

    def read(name: str) -> str:
        if name not in files:
            raise FileNotFoundError(name)
        return files[name]

    assert expand_responses(["@outer.rsp", "-o", "x.o"], read) == \
        ["-O2", "-Iinc", "a b.c", "-c", "-o", "x.o"]
    assert expand_responses(["-c", "a.c"], read) == ["-c", "a.c"]
    assert expand_responses(["@missing.rsp"], read) is None
    assert expand_responses(["@loop.rsp"], read) is None
    got = plan(["gcc", *expand_responses(["@outer.rsp", "-o", "x.o"], read)])
    assert isinstance(got, Remote) and got.source == "a b.c" and got.output == "x.o"


def test_the_local_cache_trims_the_least_recently_used_entries_only(tmp_path: Path) -> None:
    """Past its size, the local cache drops its oldest entries (and the
    objects only they named) until it fits — not everything."""
    cache = DirectCache(str(tmp_path / "cache"))
    (tmp_path / "h.h").write_text("#define H 1\n")
    for i in range(4):
        obj = tmp_path / f"o{i}.o"
        obj.write_bytes(bytes([i]) * 10_000)          # objects are most of the size
        cache.record(f"{i:064x}", [str(tmp_path / "h.h")], str(obj), None)
        entry = tmp_path / "cache" / "00" / f"{i:064x}"
        os.utime(entry, (1_000_000 + i, 1_000_000 + i))   # oldest first
    cache.trim(25_000)                                # room for two objects and entries
    kept = [i for i in range(4) if cache.lookup(f"{i:064x}", str(tmp_path / "out.o"), None)]
    assert kept == [2, 3]
    assert (tmp_path / "out.o").read_bytes() == bytes([3]) * 10_000


def test_recording_keeps_the_local_cache_a_bucket_at_a_time(tmp_path: Path) -> None:
    """What a recording does now and then: one bucket to its share of the
    bound (oldest entries first; other buckets untouched), and the older
    layout's separate objects removed. No compile walks the whole cache."""
    root = tmp_path / "cache"
    cache = DirectCache(str(root))
    (tmp_path / "h.h").write_text("#define H 1\n")
    keys = [f"aa{i:062x}" for i in range(5)] + [f"bb{0:062x}"]
    for i, key in enumerate(keys):
        obj = tmp_path / f"o{i}.o"
        obj.write_bytes(bytes([i]) * 10_000)
        cache.record(key, [str(tmp_path / "h.h")], str(obj), None)
        entry = root / key[:2] / key
        os.utime(entry, (1_000_000 + i, 1_000_000 + i))   # oldest first
    (root / "objects" / "00").mkdir(parents=True)
    (root / "objects" / "00" / ("00" * 32)).write_bytes(b"an object of the older layout")
    cache.trim_bucket(256 * 25_000, "aa")                 # room for two in bucket aa
    kept = [k for k in keys if cache.lookup(k, str(tmp_path / "out.o"), None)]
    assert kept == [keys[3], keys[4], keys[5]]
    assert not (root / "objects").exists()


def test_the_local_cache_records_what_was_compiled_not_what_is_there_after(
        tmp_path: Path) -> None:
    """meshcc's agent hands the local cache each file's digest and stamp as
    it shipped them: a header edited while the compile ran is recorded as it
    was compiled, so the object is never served for the edited header."""
    from crc.cc.direct import _stat, digest_file
    cache = DirectCache(str(tmp_path / "cache"))
    header = tmp_path / "h.h"
    header.write_text("#define H 1\n")
    shipped = [digest_file(str(header)), *_stat(str(header))]
    obj = tmp_path / "a.o"
    obj.write_bytes(b"compiled with H 1")
    header.write_text("#define H 22\n")                # edited while it compiled
    cache.record("ab" * 32, [str(header)], str(obj), None, [shipped])
    assert not cache.lookup("ab" * 32, str(tmp_path / "out.o"), None)
    header.write_text("#define H 1\n")                 # back as compiled: a hit
    assert cache.lookup("ab" * 32, str(tmp_path / "out.o"), None)
    assert (tmp_path / "out.o").read_bytes() == b"compiled with H 1"


def test_only_short_file_names_have_their_check_remembered() -> None:
    """A peer sending thousands of huge, different names must not grow our
    memory: only names up to REMEMBERED_NAME are remembered."""
    from crc.jobs.files import REMEMBERED_NAME, _remembered, bad_relative_path
    before = _remembered.cache_info().currsize
    assert bad_relative_path("x" * (REMEMBERED_NAME + 1)) is None
    assert _remembered.cache_info().currsize == before
    assert bad_relative_path("short/name.h") is None and bad_relative_path("../up") is not None
    assert _remembered.cache_info().currsize >= min(before + 1, _remembered.cache_info().maxsize)


def test_only_a_meshcc_that_did_not_start_the_agent_does_other_work_while_it_starts(
        tmp_path: Path) -> None:
    """``talk.ask`` calls ``meanwhile`` while another meshcc's agent starts;
    never once the agent it waits for is one it started itself (whose lock
    it then finds taken, by that agent, on its next try)."""
    from crc.cc.compiler import MeshFailure
    from crc.cc.talk import ask
    path = str(tmp_path / "agent.sock")          # nobody ever listens there
    for said, calls_expected in ((["started", "elsewhere", "elsewhere"], False),
                                 (["elsewhere", "elsewhere", "elsewhere"], True),
                                 (["", "", ""], False)):
        states = iter(said + [said[-1]] * 100)
        called = []
        with pytest.raises(MeshFailure, match="did not start within"):
            ask(path, {}, 1.2, 1.0, lambda _: next(states),
                lambda: called.append(True))
        assert bool(called) == calls_expected, said


def test_work_directories_are_kept_while_compiles_are_in_flight_and_none_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's work directories (``crc.cc.front.WorkDirs``): emptied and
    kept for the next compile beside the same folder while others are in
    flight; the last one back removes them all; one that is no longer an
    empty directory of ours is left alone, never followed."""
    from crc.cc.front import WorkDirs
    out = tmp_path / "build"
    out.mkdir()
    monkeypatch.chdir(tmp_path)
    in_flight = [True]
    dirs = WorkDirs(lambda: in_flight[0])
    first = dirs.take("build/a.o")
    assert os.path.dirname(first) == str(out) and os.listdir(first) == []
    Path(first, "out.o").write_bytes(b"object")
    dirs.give(first)                                  # others in flight: kept, emptied
    assert os.listdir(first) == []
    assert dirs.take("build/b.o") == first            # ... and taken again
    second = dirs.take("build/c.o")
    assert second != first
    dirs.give(first)
    dirs.give(second)
    # One kept directory turned into something else: left as it is.
    os.rmdir(second)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    os.symlink(victim, second)
    third = dirs.take("build/d.o")                    # (skips it, takes the other)
    fourth = dirs.take("build/e.o")                   # (none kept: a new one)
    assert third == first and fourth not in (first, second)
    in_flight[0] = False
    dirs.give(third)                                  # the last one back: none left
    dirs.give(fourth)
    left = [p for p in out.iterdir() if p.name.startswith(".meshcc-")]
    assert left == [Path(second)] and left[0].is_symlink()
    assert (victim / "precious").read_text() == "keep me"


def test_a_local_cache_entry_half_written_is_a_miss_and_a_new_one_replaces_an_old(
        tmp_path: Path) -> None:
    """Entries are written under their own names (no rename): one cut short
    — a reader that came early, a writer that died — is a miss, never a
    short object; recording the same key again replaces the entry whole."""
    from crc.cc.direct import _stat, digest_file
    cache = DirectCache(str(tmp_path / "cache"))
    source = tmp_path / "a.c"
    source.write_text("int a;\n")
    known = [[digest_file(str(source)), *_stat(str(source))]]
    obj = tmp_path / "a.o"
    obj.write_bytes(b"first object " * 100)
    key = "cd" * 32
    cache.record(key, [str(source)], str(obj), None, known)
    entry = Path(cache._entry(key))
    whole = entry.read_bytes()
    assert [p.name for p in entry.parent.iterdir()] == [key]     # (no temporary left)
    for cut in (len(whole) - 1, len(whole) // 2, 3):
        entry.write_bytes(whole[:cut])
        assert not cache.lookup(key, str(tmp_path / "out.o"), None), cut
        assert not (tmp_path / "out.o").exists()
    obj.write_bytes(b"second object")
    cache.record(key, [str(source)], str(obj), None, known)      # (one is there: replaced)
    assert cache.lookup(key, str(tmp_path / "out.o"), None)
    assert (tmp_path / "out.o").read_bytes() == b"second object"
