"""The scenario files, run through the manager API, and units of the manager.

Every file in TestCases/ runs in-process; a few also run with servers as
``mesh_server.py`` processes. The only pauses are the files' own WAIT lines.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from crc.protocol import ClientChat, ServerQuit, encode
from crc.routing import Kind
from crc.scenarios import ScenarioResult, check, run_scenario
from crc.scenarios.cli import find_scenarios
from crc.scenarios.commands import CommandError, parse_command, split_line, tokenise
from crc.scenarios.plain_client import V1Reader, V1Violation
from crc.scenarios.scenario import ScenarioError, from_dict
from crc.scenarios.texts import comparable, sized_text

ROOT = Path(__file__).resolve().parents[1]
CASES = find_scenarios(ROOT / "TestCases")
#: A chain with chats, a server kill, and plain clients next to job-service extension traffic.
PROCESS_CASES = ["05_chat_3_hops", "15_server_killed", "19_plain_client_on_mesh"]


def explain(result: ScenarioResult) -> str:
    lines = [f"{result.name} failed ({result.mode}):"]
    lines += [f"  {problem}" for problem in result.problems]
    lines.append(f"  log: {result.log_file}")
    return "\n".join(lines)


# -- the scenario files ----------------------------------------------------------------


def test_there_are_enough_scenarios() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_scenario_in_process(path: Path) -> None:
    result = run_scenario(path, root=ROOT)
    assert result.passed, explain(result)
    assert result.mode == "in-process"


@pytest.mark.parametrize("name", PROCESS_CASES)
def test_scenario_with_server_processes(name: str) -> None:
    (path,) = [p for p in CASES if p.stem == name]
    result = run_scenario(path, processes=True, root=ROOT)
    assert result.passed, explain(result)
    assert result.mode == "processes"


def test_a_wrong_expectation_fails_naming_machine_and_key() -> None:
    scenario = from_dict({
        "type": "CRC_functionality",
        "commands": [
            "LAUNCHSERVER --id 1 --servername hub --port 24901 --info x --log-file hub.log",
            "LAUNCHCLIENT --id 7 --serverhost hub --serverport 24901 --username ann --info x",
            "WAIT 0.3",
            "KILL ALL",
        ],
        "final_state": {
            "hub": {"hosts_db": [7, 8], "status_updates_log": []},
            "ann": {"connected_user_ids": [], "chat_messages_log": []},
        },
    }, name="wrong_expectation")
    result = run_scenario(scenario, root=ROOT)
    assert not result.passed
    assert [(p.machine, p.key, p.missing) for p in result.problems] == [("hub", "hosts_db", (8,))]


def test_a_broken_command_fails_the_scenario_with_its_line() -> None:
    scenario = from_dict({"type": "CRC_functionality",
                          "commands": ["CLIENTCOMMAND --username nobody --command QUIT"]},
                         name="broken")
    result = run_scenario(scenario, root=ROOT)
    assert not result.passed
    assert "line 1" in result.problems[0].message
    assert "nobody" in result.problems[0].message


# -- tokeniser and options -------------------------------------------------------------


def test_tokens_keep_their_quotes() -> None:
    assert tokenise('--info "Home"') == ["--info", '"Home"']
    assert tokenise('MESSAGE 102 "Hello, there"') == ["MESSAGE", "102", '"Hello, there"']


def test_commas_and_blanks_separate_tokens() -> None:
    assert tokenise("a,b  c,,d\te") == ["a", "b", "c", "d", "e"]


def test_quoted_stretches_glue_to_their_neighbours() -> None:
    assert tokenise('x"a b"y z') == ['x"a b"y', "z"]
    assert tokenise(r'"say \"hi\", please"') == [r'"say \"hi\", please"']


def test_a_line_splits_once_on_its_first_space() -> None:
    assert split_line("WAIT 0.25") == ("WAIT", "0.25")
    assert split_line('CLIENTCOMMAND --username a --command QUIT "x y"') == \
        ("CLIENTCOMMAND", '--username a --command QUIT "x y"')
    assert parse_command("KILL ALL").rest == "ALL"
    assert parse_command("WAIT 0.25").rest == "0.25"


def test_options_parse_like_optparse() -> None:
    cmd = parse_command('LAUNCHSERVER --id 2 --servername rivendale --port 33302 --info "House" '
                        '--log-file rivendale.log --connect_to_host theshire --connect_to_port=33301')
    assert cmd.options == {"id": "2", "servername": "rivendale", "port": "33302",
                           "info": '"House"', "log_file": "rivendale.log",
                           "connect_to_host": "theshire", "connect_to_port": "33301"}
    assert cmd.args == ()
    chat = parse_command('CLIENTCOMMAND --username frodo --command MESSAGE 102 "Hello there"')
    assert chat.options == {"username": "frodo", "command": "MESSAGE"}
    assert chat.args == ("102", '"Hello there"')
    plain = parse_command("LAUNCHCLIENT --plain --username ann --serverport 1")
    assert plain.flag("plain") and plain.option("username") == "ann"


def test_short_options_abbreviations_and_flags_as_optparse() -> None:
    cmd = parse_command("LAUNCHCLIENT -U frodo -P33301 --serverh theshire --simulate --id 0x10")
    assert cmd.options == {"username": "frodo", "serverport": "33301",
                           "serverhost": "theshire", "simulate": True, "id": "0x10"}
    assert cmd.number("id") == 16
    with pytest.raises(CommandError, match="ambiguous"):
        parse_command("LAUNCHCLIENT --s x")


@pytest.mark.parametrize("line", [
    "LAUNCHSERVER --colour red",
    "LAUNCHSERVER --port",
    "LAUNCHCLIENT --plain=yes",
    "FLY --to the moon",
])
def test_bad_lines_are_refused(line: str) -> None:
    with pytest.raises(CommandError):
        parse_command(line)


def test_a_bad_file_is_refused_before_running() -> None:
    with pytest.raises(ScenarioError, match="line|unknown"):
        from_dict({"type": "CRC_functionality", "commands": ["LAUNCH --id 1"]}, name="x")
    with pytest.raises(ScenarioError, match="type"):
        from_dict({"type": "chat", "commands": []}, name="x")
    with pytest.raises(ScenarioError, match="digest"):
        from_dict({"type": "CRC_functionality", "commands": [],
                   "final_state": {"a": {"chat_messages_log": [{"size": 3, "sha256": "00"}]}}},
                  name="x")


# -- comparisons -------------------------------------------------------------------------

SERVER = {"hosts_db": [2, 101], "status_updates_log": [], "adjacent_server_ids": [2],
          "adjacent_user_ids": [101],
          "hosts": {"2": {"first_link": 2}, "101": {"first_link": 101}}}
CLIENT = {"connected_user_ids": [102], "status_updates_log": ["Welcome"],
          "chat_messages_log": ["hi", "hi"]}
KINDS = {"hub": Kind.SERVER, "ann": Kind.CLIENT}
STATES = {"hub": SERVER, "ann": CLIENT}


def test_matching_state_passes_in_any_order() -> None:
    expected = {"hub": {"hosts_db": [101, 2], "status_updates_log": []},
                "ann": {"connected_user_ids": [102], "status_updates_log": ["Welcome"],
                        "chat_messages_log": ["hi", "hi"]}}
    assert check("CRC_functionality", expected, KINDS, STATES) == []


def test_a_difference_names_machine_key_and_entries() -> None:
    expected = {"hub": {"hosts_db": [2, 103]}, "ann": {"status_updates_log": []}}
    problems = check("CRC_functionality", expected, KINDS, STATES)
    assert [(p.machine, p.key, p.missing, p.unexpected) for p in problems] == [
        ("hub", "hosts_db", (103,), (101,)),
        ("ann", "status_updates_log", (), ("Welcome",)),
    ]
    assert "hub.hosts_db" in str(problems[0])


def test_lists_must_have_equal_length() -> None:
    problems = check("CRC_functionality", {"ann": {"chat_messages_log": ["hi"]}}, KINDS, STATES)
    assert len(problems) == 1 and "length" in problems[0].message


def test_adjacency_is_ignored_unless_strict() -> None:
    expected = {"hub": {"hosts_db": [2, 101], "adjacent_server_ids": [99],
                        "adjacent_user_ids": []}}
    assert check("CRC_functionality", expected, KINDS, STATES) == []
    problems = check("mesh_strict", expected, KINDS, STATES)
    assert [(p.machine, p.key) for p in problems] == [("hub", "adjacent_server_ids"),
                                                      ("hub", "adjacent_user_ids")]


def test_strict_checks_first_links_and_refuses_unknown_keys() -> None:
    expected = {"hub": {"first_links": {"2": 2, "101": 2}, "colour": "red"}}
    problems = check("mesh_strict", expected, KINDS, STATES)
    assert [(p.machine, p.key) for p in problems] == [("hub", "first_links"), ("hub", "colour")]
    assert problems[0].missing == ("101: 2",) and problems[0].unexpected == ("101: 101",)


def test_unknown_machines_are_skipped_unless_strict() -> None:
    assert check("CRC_functionality", {"bob": {"hosts_db": []}}, KINDS, STATES) == []
    problems = check("mesh_strict", {"bob": {"hosts_db": []}}, KINDS, STATES)
    assert [(p.machine, p.key) for p in problems] == [("bob", "")]


def test_network_connectivity_compares_only_server_chunks() -> None:
    states = {"hub": {**SERVER, "recvd_messages_asdqw": ["00aa"], "sent_messages_asdqw": []},
              "ann": CLIENT}
    expected = {"hub": {"recvd_messages_asdqw": ["00aa"], "hosts_db": [5]},
                "ann": {"connected_user_ids": [1, 2, 3]}}
    assert check("network_connectivity", expected, KINDS, states) == []
    problems = check("network_connectivity", {"hub": {"recvd_messages_asdqw": []}}, KINDS, states)
    assert [(p.machine, p.key, p.unexpected) for p in problems] == [
        ("hub", "recvd_messages_asdqw", ("00aa",))]


def test_a_plain_client_error_fails_any_scenario() -> None:
    states = {**STATES, "ann": {**CLIENT, "fatal_error": "unknown message type 0x02"}}
    problems = check("CRC_functionality", {}, KINDS, states)
    assert [(p.machine, p.key) for p in problems] == [("ann", "fatal_error")]


def test_long_texts_compare_by_digest() -> None:
    text = sized_text(1000)
    digest = {"size": 1000, "sha256": hashlib.sha256(text.encode()).hexdigest()}
    assert comparable(text) == comparable(digest)
    states = {"ann": {**CLIENT, "chat_messages_log": [text]}}
    assert check("CRC_functionality", {"ann": {"chat_messages_log": [digest]}}, KINDS, states) == []


def test_sized_text_is_exact_and_says_where_it_is() -> None:
    assert sized_text(20) == "0000000 0000008 0000"
    assert len(sized_text(1 << 20).encode()) == 1 << 20


# -- the plain v1 client's reader --------------------------------------------------------


def test_plain_reader_cuts_v1_messages_from_any_split() -> None:
    data = encode(ClientChat(1, 2, "hello")) * 2
    reader = V1Reader()
    out = [msg for i in range(len(data)) for msg in reader.feed(data[i:i + 1])]
    assert out == [(0x81, 1, 2, "hello")] * 2


def test_plain_reader_refuses_types_outside_v1() -> None:
    with pytest.raises(V1Violation, match="0x02"):
        V1Reader().feed(encode(ServerQuit(5, 0, "gone")))
