"""Rakefile parser: the documented format, and FILE:LINE errors for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from crc.jobs.rakefile import Action, RakefileError, check_files, likely_outputs, parse

EXAMPLE = """\
# A typical Rakefile
PORT  = 6238
HOSTS = build1 build2:6239 127.0.0.1

actionset1:
\techo starting actionset1
\tremote-cc -c program.c
\t\trequires program.c program.h allfunctions.h
\tremote-cc -c square.c
\t\trequires square.c allfunctions.h

actionset2:
\tremote-cc -o program program.o square.o
\t\trequires program.o square.o
"""


def test_the_documented_example() -> None:
    rf = parse(EXAMPLE, "Rakefile")
    assert rf.port == 6238
    assert rf.hosts == (("build1", 6238), ("build2", 6239), ("127.0.0.1", 6238))
    assert [s.name for s in rf.actionsets] == ["actionset1", "actionset2"]
    first = rf.actionsets[0].actions
    assert first[0] == Action("echo starting actionset1", False, 6)
    assert first[1] == Action("cc -c program.c", True, 7,
                              ("program.c", "program.h", "allfunctions.h"))
    assert rf.actionsets[1].actions[0].requires == ("program.o", "square.o")


def test_spaces_are_tolerated_for_tabs() -> None:
    rf = parse("build:\n    remote-cc -c a.c\n        requires a.c\n    echo hi\n")
    assert [a.command for a in rf.actionsets[0].actions] == ["cc -c a.c", "echo hi"]
    assert rf.actionsets[0].actions[0].requires == ("a.c",)


@pytest.mark.parametrize("text, error", [
    ("\tremote-cc x\n", "R:1: action outside an actionset"),
    ("s:\n\t\trequires a.c\n", "R:2: 'requires' with no action above it"),
    ("FOO = 1\ns:\n\tx\n", "R:1: unknown setting 'FOO'"),
    ("PORT = abc\ns:\n\tx\n", "R:1: PORT must be a number"),
    ("HOSTS = a:99999\ns:\n\tx\n", "R:1: bad host 'a:99999'"),
    ("s:\n\tx\ns:\n\ty\n", "R:3: actionset 's' is defined twice"),
    ("s:\n", "R:1: actionset 's' has no actions"),
    ("s:\n\tcc 'unclosed\n", "R:2: cannot parse command"),
    ("s:\n\tremote-cc\n\t\trequires ../etc/passwd\n", "R:3: file name '../etc/passwd' leaves"),
    ("s:\n\tremote-cc\n\t\trequires /etc/passwd\n", "R:3: file name '/etc/passwd' is absolute"),
    ("s:\n\tx\n\t\trequire a\n", "R:3: line indented under an action must start with 'requires'"),
    ("what is this\n", "R:1: expected 'NAME:'"),
    ("# only a comment\n", "R:1: no actionsets"),
    ("s:\n\tremote-\n", "R:2: 'remote-' with no command"),
])
def test_errors_name_file_and_line(text: str, error: str) -> None:
    with pytest.raises(RakefileError) as info:
        parse(text, "R")
    assert any(e.startswith(error) for e in info.value.errors), info.value.errors


def test_all_errors_are_reported_at_once() -> None:
    with pytest.raises(RakefileError) as info:
        parse("\tx\nFOO = 1\n", "R")
    assert len(info.value.errors) == 2


def test_likely_outputs() -> None:
    assert likely_outputs(Action("cc -c src/a.c b.c", True, 1)) == {"a.o", "b.o"}
    assert likely_outputs(Action("cc -o prog a.o", True, 1)) == {"prog"}
    assert likely_outputs(Action("echo hi > out.txt", False, 1)) == {"out.txt"}


def test_check_files_allows_outputs_of_earlier_actionsets(tmp_path: Path) -> None:
    for name in ("program.c", "program.h", "allfunctions.h", "square.c"):
        (tmp_path / name).write_text("")
    check_files(parse(EXAMPLE), tmp_path)
    (tmp_path / "square.c").unlink()
    with pytest.raises(RakefileError, match="Rakefile:9: required file 'square.c' does not exist"):
        check_files(parse(EXAMPLE), tmp_path)


def test_hosts_take_commas_and_bracketed_ipv6_and_port_only_ascii_digits() -> None:
    rf = parse("HOSTS = a:1,b:2 [::1]:5 [::2] c\nPORT = 7\nset:\n\techo hi\n")
    assert rf.hosts == (("a", 1), ("b", 2), ("::1", 5), ("::2", 7), ("c", 7))
    for bad in ("PORT = ²\n", "PORT = ５\n", "HOSTS = h:²\n"):
        with pytest.raises(RakefileError):
            parse(bad + "set:\n\techo hi\n")


def test_line_numbers_count_newlines_only_and_a_bom_is_ignored() -> None:
    with pytest.raises(RakefileError) as caught:
        parse("\ufeff# a comment with a form feed \x0c and U+2028 \u2028 inside\nset:\n"
              "\techo ok\nbad line\n")
    assert caught.value.errors == ["Rakefile:4: expected 'NAME:' to open an actionset or "
                                   "'KEY = value', got 'bad line'"]


def test_a_nul_byte_or_an_overlong_command_is_an_error_up_front() -> None:
    with pytest.raises(RakefileError, match="Rakefile:2: the command contains a NUL byte"):
        parse("set:\n\techo a\0b\n\techo fine\n")
    with pytest.raises(RakefileError, match="Rakefile:2: the command is 200000 characters"):
        parse("set:\n\t" + "x" * 200_000 + "\n")


def test_ten_thousand_actionsets_parse_quickly() -> None:
    text = "".join(f"s{i}:\n\techo {i}\n" for i in range(10_000))
    assert len(parse(text).actionsets) == 10_000     # (the duplicate check was quadratic)
