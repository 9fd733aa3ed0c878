"""The chat client's command parser: pure, no network, no screen."""

from __future__ import annotations

import pytest

from crc.client.commands import (
    COMMANDS, DEFAULT_WAIT, Cancel, CommandError, Eof, Help, Jobs, Load, Msg, Nothing, Quit, Rake,
    Run, RunAll, Say, Sleep, TreeCmd, Wait, WaitMsg, Who, parse,
)


@pytest.mark.parametrize("line, expected", [
    ("hello", Say("hello")),
    ("  leading and trailing  ", Say("  leading and trailing  ")),
    ('héllo «wörld» "quoted"', Say('héllo «wörld» "quoted"')),
    ("//etc/passwd is a path", Say("/etc/passwd is a path")),
    ("hello\n", Say("hello")),
    ("hello\r\n", Say("hello")),
    ("", Nothing()),
    ("   \t", Nothing()),
    ("# not a comment interactively", Say("# not a comment interactively")),
])
def test_plain_lines(line: str, expected: object) -> None:
    assert parse(line) == expected


def test_comments_only_in_scripts() -> None:
    assert parse("# a comment", script=True) == Nothing()
    assert parse("   # indented comment", script=True) == Nothing()
    assert parse("text # with a hash", script=True) == Say("text # with a hash")


@pytest.mark.parametrize("line, expected", [
    ("/msg bob hi", Msg("bob", "hi")),
    ("/msg 102 hi there", Msg("102", "hi there")),
    ('/msg bob   héllo «wörld» "x"  ', Msg("bob", 'héllo «wörld» "x"  ')),
    ("/msg\tbob\ttabbed text", Msg("bob", "tabbed text")),
    ("/msg bob", Msg("bob", "")),
    ("/MSG bob loud", Msg("bob", "loud")),
    ("  /msg bob spaced", Say("  /msg bob spaced")),
])
def test_msg(line: str, expected: object) -> None:
    assert parse(line) == expected


@pytest.mark.parametrize("line, expected", [
    ("/who", Who()),
    ("/help", Help()),
    ("/quit", Quit("")),
    ("/quit see you «soon»", Quit("see you «soon»")),
    ("/wait bob", Wait("bob", DEFAULT_WAIT)),
    ("/wait 102 2.5", Wait("102", 2.5)),
    ("/wait bob 0", Wait("bob", 0.0)),
    ("/waitmsg alice", WaitMsg("alice", DEFAULT_WAIT)),
    ("/waitmsg alice 30", WaitMsg("alice", 30.0)),
    ("/sleep 0.25", Sleep(0.25)),
])
def test_other_commands(line: str, expected: object) -> None:
    assert parse(line) == expected


@pytest.mark.parametrize("line, message", [
    ("/frobnicate now", "unknown command /frobnicate"),
    ("/", "a command name must follow '/'"),
    ("/msg", "/msg needs a user name or id"),
    ("/msg   ", "/msg needs a user name or id"),
    ("/who bob", "/who takes no arguments"),
    ("/help me", "/help takes no arguments"),
    ("/wait", "/wait needs a user name or id"),
    ("/wait bob soon", "'soon' is not a number of seconds"),
    ("/wait bob -1", "'-1' is not a number of seconds (0 or more)"),
    ("/wait bob nan", "'nan' is not a number of seconds (0 or more)"),
    ("/wait bob 1 2", "unexpected '2'"),
    ("/waitmsg", "/waitmsg needs a user name or id"),
    ("/sleep", "/sleep needs a number of seconds"),
    ("/sleep inf", "'inf' is not a number of seconds (0 or more)"),
    ("/sleep 1 2", "unexpected '2'"),
])
def test_errors_say_what_is_wrong(line: str, message: str) -> None:
    with pytest.raises(CommandError) as caught:
        parse(line)
    assert message in str(caught.value)


def test_usage_errors_show_the_usage() -> None:
    with pytest.raises(CommandError, match=r"usage: /wait NAME\|ID \[SECONDS\]"):
        parse("/wait")


def test_unknown_command_hints_at_help() -> None:
    with pytest.raises(CommandError, match=r"type /help"):
        parse("/nick bob")


def test_every_listed_command_parses() -> None:
    samples = {"msg": "/msg bob hi", "who": "/who", "wait": "/wait bob", "waitmsg": "/waitmsg bob",
               "sleep": "/sleep 1", "quit": "/quit", "help": "/help",
               "run": "/run make", "runall": "/runall uname -n", "jobs": "/jobs",
               "cancel": "/cancel 1.2", "load": "/load", "tree": "/tree", "rake": "/rake",
               "eof": "/eof"}
    assert set(samples) == set(COMMANDS)
    for line in samples.values():
        parse(line)


# -- job commands ----------------------------------------------------------------


@pytest.mark.parametrize("line, expected", [
    ('/run ls -l "a b"', Run('ls -l "a b"')),
    ("/run --on s2 -i cat", Run("cat", on="s2", stdin=True)),
    ("/run -i --on s2 tr a-z A-Z", Run("tr a-z A-Z", on="s2", stdin=True)),
    ("/run   echo  spaced  ", Run("echo  spaced")),
    ("/runall uname -n", RunAll("uname -n")),
    ("/jobs", Jobs()),
    ("/cancel 17.3@s2", Cancel("17.3@s2")),
    ("/load", Load()),
    ("/tree", TreeCmd()),
    ("/rake", Rake("Rakefile")),
    ("/rake build/Rakefile", Rake("build/Rakefile")),
    ("/eof", Eof()),
])
def test_job_commands_parse(line: str, expected: object) -> None:
    assert parse(line) == expected


@pytest.mark.parametrize("line, error", [
    ("/run", "/run needs a command"),
    ("/run --on", "--on needs a server name"),
    ("/run -i", "/run needs a command"),
    ("/runall", "/runall needs a command"),
    ("/cancel", "/cancel needs exactly one job id"),
    ("/cancel a b", "/cancel needs exactly one job id"),
    ("/load now", "/load takes no arguments"),
    ("/rake a b", "unexpected 'b'"),
])
def test_job_command_errors(line: str, error: str) -> None:
    with pytest.raises(CommandError, match=error):
        parse(line)
