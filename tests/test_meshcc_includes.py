"""What meshcc ships without preprocessing (``crc.cc.includes``,
``crc.cc.ship``): includes followed as GCC searches for them, what cannot
be followed named, command lines mapped into the job's root, and dependency
files written back exactly as GCC writes them — checked against GCC itself."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from crc.cc.includes import Scanner, Search, Unscannable, directives
from crc.cc.ship import (NotShipped, Probe, _render, parse_probe, plan_shipment, probe_flags,
                         rewrite_deps, root_prefix)

GCC = shutil.which("gcc")


def names(found) -> list[str]:
    return [f.name for f in found]


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_directives_are_read_with_their_kind_and_what_cannot_be_followed_is_named() -> None:
    text = (b'#include "a.h"\n  #  include <b/c.h>\n#include_next <d.h>\n'
            b'#if __has_include(<e.h>)\n#endif\n#import "f.h"\n#incl\\\nude "g.h"\n'
            b'// #include <commented.h> is read too: over-approximating is safe\n')
    found, problem = directives(text)
    assert problem is None
    assert found == [(True, False, "a.h"), (False, False, "b/c.h"), (False, True, "d.h"),
                     (True, False, "f.h"), (True, False, "g.h"), (False, False, "e.h")]
    assert directives(b"#define H <x.h>\n#include H\n")[1] == "#include H"
    assert directives(b"#if __has_include(NAME)\n#endif\n")[1] == "__has_include of a macro"
    assert directives(b'asm(".incbin \\"blob\\"");\n')[1] == "assembler .incbin"


def test_headers_are_found_where_gcc_finds_them(tmp_path: Path) -> None:
    write(tmp_path, {
        "src/main.c": '#include "local.h"\n#include <lib.h>\n#include "quoted.h"\n',
        "src/local.h": '#include "sibling.h"\n',        # the includer's own directory
        "src/sibling.h": "",
        "inc/local.h": "never: src/ has one",
        "quote/quoted.h": "",
        "inc/quoted.h": "never: -iquote comes first for \"\"",
        "inc/lib.h": "#include_next <lib.h>\n",
        "sys/lib.h": "#include <missing.h>\n",          # not found anywhere: not shipped
    })
    search = Search(["quote"], [("inc", False), ("sys", True)])
    found = Scanner().closure(str(tmp_path), "src/main.c", search, [])
    assert sorted(names(found)) == sorted(["src/main.c", "src/local.h", "src/sibling.h",
                                           "inc/lib.h", "sys/lib.h", "quote/quoted.h"])
    system = {f.name: f.system for f in found}
    assert system["sys/lib.h"] and not system["inc/lib.h"]
    assert all(f.path == os.path.join(str(tmp_path), f.name) for f in found)


def test_a_computed_include_anywhere_makes_the_compile_unscannable(tmp_path: Path) -> None:
    write(tmp_path, {"a.c": '#include "b.h"\n', "b.h": "#include CONFIG\n"})
    with pytest.raises(Unscannable, match="b.h: #include CONFIG"):
        Scanner().closure(str(tmp_path), "a.c", Search([], []), [])


def test_a_precompiled_header_makes_the_compile_unscannable(tmp_path: Path) -> None:
    write(tmp_path, {"a.c": '#include "big.h"\n', "big.h": "", "big.h.gch": "binary"})
    with pytest.raises(Unscannable, match="precompiled header"):
        Scanner().closure(str(tmp_path), "a.c", Search([], []), [])


def test_a_file_is_read_again_only_when_it_changed(tmp_path: Path) -> None:
    write(tmp_path, {"a.c": '#include "b.h"\n', "b.h": "", "c.h": ""})
    scanner = Scanner()
    scanner.closure(str(tmp_path), "a.c", Search([], []), [])
    scanner.closure(str(tmp_path), "a.c", Search([], []), [])
    assert scanner.read == 2
    (tmp_path / "b.h").write_text('#include "c.h"\n')
    found = scanner.closure(str(tmp_path), "a.c", Search([], []), [])
    assert names(found) == ["a.c", "b.h", "c.h"] and scanner.read == 4


def test_the_compilers_own_preinclude_must_be_the_one_it_finds(tmp_path: Path) -> None:
    write(tmp_path, {"a.c": "", "sys/stdc-predef.h": "", "stdc-predef.h": "a stray one here"})
    search = Search([], [("sys", True)])
    with pytest.raises(Unscannable, match="stdc-predef.h"):
        Scanner().closure(str(tmp_path), "a.c", search,
                          [("stdc-predef.h", str(tmp_path / "sys" / "stdc-predef.h"))])
    (tmp_path / "stdc-predef.h").unlink()
    found = Scanner().closure(str(tmp_path), "a.c", search,
                              [("stdc-predef.h", str(tmp_path / "sys" / "stdc-predef.h"))])
    assert names(found) == ["a.c", "sys/stdc-predef.h"]


def test_paths_are_mapped_into_the_root_and_relative_ones_kept() -> None:
    probe = Probe(["/usr/lib/gcc/x/12/include", "/usr/include"], ["/usr/include/stdc-predef.h"])
    words = ["-O2", "-g", "-Iinc", "-I/abs/inc", "-isystem", "/opt/sys", "-iquote", "q",
             "-include", "/abs/pre.h", "-DX=1", "-MMD", "-MP", "-c", "/abs/src/a.c",
             "-o", "out/a.o"]
    plan = plan_shipment(words, "/home/me/build", "out/a.o", "/abs/src/a.c", probe)
    p = root_prefix("/home/me/build")
    assert p == "../../../../.meshcc-root"
    assert plan.argv == [
        "-include", "stdc-predef.h", "-O2", "-g", "-I", "inc", "-I", p + "/abs/inc",
        "-isystem", p + "/opt/sys", "-iquote", "q", "-include", p + "/abs/pre.h", "-DX=1",
        "-MMD", "-MP", "-c", p + "/abs/src/a.c", "-MF", "../../../../meshcc-out.d", "-MQ",
        "out/a.o", "-o", "../../../../meshcc-out.o", "-nostdinc",
        "-isystem", p + "/usr/lib/gcc/x/12/include",
        "-isystem", p + "/usr/include", f"-ffile-prefix-map={p}/=/"]
    assert plan.depfile == "out/a.d"
    assert plan.search.chain == ["q", "inc", "/abs/inc", "/opt/sys",
                                 "/usr/lib/gcc/x/12/include", "/usr/include"]
    assert probe_flags(words, "c") == ["-O2", "-g", "-x", "c"]
    # (-Wmissing-include-dirs: over there a directory nothing was shipped
    # from is missing, and a reused job directory may have one this one lacks)
    for bad, why in ((["-nostdinc"], "-nostdinc"), (["-I../../../../x"], "climbs above"),
                     (["-Wmissing-include-dirs"], "missing-include-dirs"),
                     (["-Werror=missing-include-dirs"], "missing-include-dirs")):
        with pytest.raises(NotShipped, match=why):
            plan_shipment([*bad, "-g", "-c", "a.c"], "/home/me/build", "a.o", "a.c", probe)


def test_the_probe_reads_gccs_own_listing() -> None:
    stderr = ("ignoring nonexistent directory \"/nope\"\n#include \"...\" search starts here:\n"
              "#include <...> search starts here:\n /usr/lib/gcc/x/12/include\n"
              " /usr/include\nEnd of search list.\n")
    probe = parse_probe(stderr, "null.o: /dev/null /usr/include/stdc-predef.h\n")
    assert probe.dirs == ["/usr/lib/gcc/x/12/include", "/usr/include"]
    assert probe.preincludes == ["/usr/include/stdc-predef.h"]
    with pytest.raises(NotShipped):
        parse_probe("gcc: error\n", "")


@pytest.mark.skipif(GCC is None, reason="needs gcc")
@pytest.mark.parametrize("options", [["-MD"], ["-MMD"], ["-MD", "-MP"],
                                     ["-MD", "-MT", "a long target name/like/cmake.c.o"]])
def test_our_writer_wraps_dependency_lines_as_gcc_does(tmp_path: Path,
                                                        options: list[str]) -> None:
    """GCC's own dependency files, with names of every length, are written
    back identically from their names (the self-check ``rewrite_deps`` makes
    before trusting itself)."""
    headers = [f"{'d' * (i % 7 + 1)}/{'h' * (3 + 5 * i % 40)}{i}.h" for i in range(30)]
    write(tmp_path, {h: "" for h in headers})
    write(tmp_path, {"a.c": "".join(f'#include "{h}"\n' for h in headers)})
    # (-nostdinc: no stdc-predef.h, a file of this machine's own in the list)
    subprocess.run([GCC, "-nostdinc", *options, "-c", "a.c", "-o", "a.o"], cwd=tmp_path,
                   check=True)
    text = (tmp_path / "a.d").read_text()
    cut = text.find(": ")
    stop = text.find("\n", cut)
    while text[stop - 1] == "\\":
        stop = text.find("\n", stop + 1)
    listed = text[cut + 1:stop + 1].replace("\\\n", " ").split()
    assert _render(text[:cut], listed) == text[:stop + 1]
    # And rewrite_deps gives it back unchanged when nothing was mapped.
    search = Search([], [])
    found = Scanner().closure(str(tmp_path), "a.c", search, [])
    assert rewrite_deps(text, str(tmp_path), root_prefix(str(tmp_path)), found) == text


def test_a_dependency_file_it_cannot_rewrite_exactly_is_refused() -> None:
    assert rewrite_deps("a.o: a\\ b.c\n", "/x", "../.meshcc-root", []) is None
    assert rewrite_deps("a.o: a.c   b.h\n", "/x", "../.meshcc-root", []) is None
    assert rewrite_deps("no rule here\n", "/x", "../.meshcc-root", []) is None


def test_dot_dot_after_a_directory_that_is_not_here_makes_the_compile_unscannable(
        tmp_path: Path) -> None:
    """``gen/../x.h`` finds nothing without ``gen``; over there a directory
    an earlier compile left could make it find ``x.h``: not shipped. With
    ``gen`` here it is followed as the compiler follows it."""
    (tmp_path / "x.h").write_text("int x;\n")
    (tmp_path / "a.c").write_text('#include "gen/../x.h"\n')
    with pytest.raises(Unscannable, match="'..' after a directory that is not here"):
        Scanner().closure(str(tmp_path), "a.c", Search([], []), [])
    (tmp_path / "gen").mkdir()
    found = Scanner().closure(str(tmp_path), "a.c", Search([], []), [])
    assert [f.path for f in found] == [str(tmp_path / "a.c"), str(tmp_path / "x.h")]
