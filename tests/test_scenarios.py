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
from crc.scenarios.commands import CommandError, parse_command, split_line, tokenise, unquote
from crc.scenarios.jobcheck import compare_files, compare_jobs, expectation_errors
from crc.scenarios.jobrequests import Submit, WriteFile, labels, request
from crc.scenarios.plain_client import V1Reader, V1Violation
from crc.scenarios.scenario import ScenarioError, from_dict
from crc.scenarios.texts import comparable, sized_bytes, sized_text

ROOT = Path(__file__).resolve().parents[1]
CASES = find_scenarios(ROOT / "TestCases")
#: A chain with chats, a server kill, and plain clients next to job-service extension
#: traffic; jobs: a big file over three hops, a server killed under a job, a C build.
PROCESS_CASES = ["05_chat_3_hops", "09_duplicate_server_id", "10_duplicate_client_id",
                 "15_server_killed", "19_plain_client_on_mesh", "42_duplicate_ids_every_kind",
                 "31_jobs_five_mib_three_hops", "34_jobs_server_killed_mid_job",
                 "39_jobs_c_build"]


def explain(result: ScenarioResult) -> str:
    lines = [f"{result.name} failed ({result.mode}):"]
    lines += [f"  {problem}" for problem in result.problems]
    lines.append(f"  log: {result.log_file}")
    return "\n".join(lines)


# -- the scenario files ----------------------------------------------------------------


def test_there_are_enough_scenarios() -> None:
    assert len(CASES) >= 25
    assert len([p for p in CASES if "_jobs_" in p.stem]) >= 10


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


@pytest.mark.parametrize("line, reason", [
    ("WAIT inf", "is not from 0 to 3600 seconds"), ("WAIT nan", "is not from 0 to 3600"),
    ("LAUNCHSERVER --id 1 --servername s --port 70000", "--port 70000 is not a port"),
    ("LAUNCHSERVER --id 99999999999 --servername s --port 25999", "--id 99999999999 is not"),
    ("LAUNCHCLIENT --id 1 --serverhost s --serverport 0 --username u", "--serverport 0"),
])
def test_values_out_of_range_fail_the_scenario_with_a_reason(line: str, reason: str) -> None:
    result = run_scenario(from_dict({"type": "CRC_functionality", "commands": [line]},
                                    name="out_of_range"), root=ROOT)
    assert not result.passed
    assert reason in result.problems[0].message


def test_the_manager_names_a_missing_directory_and_a_file_nested_too_deeply(
        tmp_path: Path) -> None:
    from crc.scenarios.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(["--dir", str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    (tmp_path / "deep.cfg").write_text("[" * 100_000)
    from crc.scenarios.scenario import load
    with pytest.raises(ScenarioError, match="nested too deeply"):
        load(tmp_path / "deep.cfg")


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


# -- the job vocabulary ------------------------------------------------------------------


def test_job_values_are_unquoted_with_escapes() -> None:
    assert unquote('"a b"') == "a b"
    assert unquote('x"1, 2"y') == "x1, 2y"
    assert unquote('""') == ""
    assert unquote(r'"say \"hi\"\n\ttab \\ \$"') == 'say "hi"\n\ttab \\ \\$'
    assert unquote(r"plain\n") == r"plain\n"          # escapes only inside quotes


def test_submit_lines_become_requests() -> None:
    cmd = parse_command('SUBMIT --username frodo --job j --file a.txt --file "b c.txt" '
                        '--on gondor --timeout 2.5 -- printf "%s\\\\n" "x, y" ""')
    assert request(cmd) == Submit("frodo", "j", ("printf", "%s\\n", "x, y", ""), None,
                                  ("a.txt", "b c.txt"), "gondor", False, 2.5, 1)
    shell = request(parse_command('SUBMIT --username frodo --job k --count 8 --shell "sleep 1"'))
    assert (shell.shell, shell.argv, shell.count) == ("sleep 1", None, 8)
    write = request(parse_command("WRITEFILE --username frodo --file x --size 10 --seed 3 "
                                  "--mode 0755"))
    assert write == WriteFile("frodo", "x", None, 10, 3, 0o755)
    assert write.content() == sized_bytes(10, 3)


@pytest.mark.parametrize("line, reason", [
    ("SUBMIT --username a --job j", "either --shell"),
    ('SUBMIT --username a --job j --shell "true" -- ls', "either --shell"),
    ("SUBMIT --username a --job j ls", "lone --"),
    ("SUBMIT --username a --job j --runall --on s1 -- ls", "exclude"),
    ("SUBMIT --username a --job j --count 0 -- ls", "not positive"),
    ("SUBMIT --username a --job j --timeout soon -- ls", "seconds"),
    ("WRITEFILE --username a --file f", "exactly one"),
    ('WRITEFILE --username a --file f --text "x" --size 3', "exactly one"),
    ('WRITEFILE --username a --file f --text "x" --mode 9', "octal"),
    ("WAITJOB --username a --job j extra", "unexpected"),
    ("RAKE --username a --job j", "--rakefile is required"),
])
def test_malformed_job_lines_are_refused(line: str, reason: str) -> None:
    with pytest.raises(CommandError, match=reason):
        request(parse_command(line))


def test_labels_are_defined_once_before_use() -> None:
    def lines(*text: str) -> list:
        return [request(parse_command(t)) for t in text]
    assert labels(lines("SUBMIT --username a --job j -- ls",
                        "RAKE --username a --job b --rakefile R",
                        "SUBMIT --username z --job j -- ls",
                        "WAITJOB --username a --job j")) == \
        {"a": {"j": "SUBMIT", "b": "RAKE"}, "z": {"j": "SUBMIT"}}
    with pytest.raises(CommandError, match="defined twice"):
        labels(lines("SUBMIT --username a --job j -- ls", "SUBMIT --username a --job j -- ls"))
    with pytest.raises(CommandError, match="before a SUBMIT or RAKE"):
        labels(lines("WAITJOB --username a --job j"))
    with pytest.raises(CommandError, match="only SUBMIT"):
        labels(lines("RAKE --username a --job b --rakefile R", "CANCEL --username a --job b"))


def test_job_expectations_are_checked_before_running() -> None:
    kinds = {"j": "SUBMIT", "b": "RAKE"}
    assert expectation_errors({"jobs": {"j": {"exit": 0, "runs": {"s1": {"exit": 0}}},
                                        "b": {"failed": [], "actions": {"x#1": {"server": "s"}}}},
                               "files": {"f": {"mode": "0755"}, "g": {"exists": False}}},
                              kinds) == []
    errors = expectation_errors({"jobs": {"j": {"exits": 0, "runs": {"s1": {"server": "s"}}},
                                          "b": {"ran_on": []}, "nope": {}},
                                 "files": {"f": {"mode": 755}, "g": {"exists": False, "size": 1}}},
                                kinds)
    assert len(errors) == 6
    assert any("'exits'" in e for e in errors) and any("'nope'" in e for e in errors)
    with pytest.raises(ScenarioError, match="unknown attribute"):
        from_dict({"type": "mesh_strict",
                   "commands": ["SUBMIT --username a --job j -- ls"],
                   "final_state": {"a": {"jobs": {"j": {"colour": "red"}}}}}, name="x")


JOB_STATE = {"kind": "submit", "state": "done", "exit": 3, "error": "", "output": "first\n",
             "servers": {"s1": 2, "s2": 1}, "ran_on": ["s1", "s2"],
             "runs": {"s1": {"exit": 3, "output": "first\n"}}}


def test_job_attributes_compare_exactly_by_key_path() -> None:
    assert compare_jobs("frodo", {"j": {"exit": 3, "output": {"contains": "irs"},
                                        "runs": {"s1": {"exit": 3}}}}, {"j": JOB_STATE}) == []
    problems = compare_jobs("frodo", {"j": {"exit": 0, "output": "first", "servers": {"s1": 2},
                                            "runs": {"s1": {"exit": 0}, "s3": {}}},
                                      "k": {"exit": 0}}, {"j": JOB_STATE})
    assert [p.key for p in problems] == ["jobs.j.exit", "jobs.j.output", "jobs.j.servers",
                                         "jobs.j.runs.s1.exit", "jobs.j.runs.s3", "jobs.k"]
    assert problems[2].unexpected == ("s2: 1",)
    assert str(problems[0]) == "frodo.jobs.j.exit: values differ; expected 0, got 3"


def test_files_compare_by_the_attributes_given() -> None:
    files = {"p": {"exists": True, "size": 3, "sha256": "ab", "mode": "0755", "text": "hi\n"}}
    assert compare_files("c", {"p": {"mode": "0755", "text": "hi\n"}, "q": {"exists": False}},
                         files) == []
    problems = compare_files("c", {"p": {"mode": "0644"}, "q": {"size": 1}, "r": {"exists": True}},
                             {**files, "r": files["p"]})
    assert [p.key for p in problems] == ["files.p.mode", "files.q"]
    problems = compare_files("c", {"p": {"exists": False}}, files)
    assert [p.key for p in problems] == ["files.p.exists"]


def test_sized_bytes_are_deterministic_and_exact() -> None:
    assert sized_bytes(1000, 1) == sized_bytes(2000, 1)[:1000]
    assert sized_bytes(64, 1) != sized_bytes(64, 2)
    assert hashlib.sha256(sized_bytes(5 << 20, 1)).hexdigest().startswith("5f0571a8")


def test_a_wrong_job_expectation_fails_naming_client_label_and_attribute() -> None:
    scenario = from_dict({
        "type": "mesh_strict",
        "commands": [
            "LAUNCHSERVER --id 1 --servername hub --port 24902 --info x --slots 1",
            "LAUNCHCLIENT --id 7 --serverhost hub --serverport 24902 --username ann --info x",
            'WRITEFILE --username ann --file in.txt --text "abc"',
            'SUBMIT --username ann --job wc --file in.txt --shell "wc -c < in.txt; exit 2"',
            "WAITJOB --username ann --job wc --timeout 10",
        ],
        "final_state": {"ann": {"jobs": {"wc": {"exit": 0, "stdout": "3\n", "ran_on": ["hub"]}},
                                "files": {"in.txt": {"text": "abc"}, "out": {"exists": True}}}},
    }, name="wrong_job_expectation")
    result = run_scenario(scenario, root=ROOT)
    assert [(p.machine, p.key, p.expected, p.actual) for p in result.problems] == [
        ("ann", "jobs.wc.exit", 0, 2), ("ann", "files.out", None, None)]


def test_a_missed_job_deadline_fails_at_its_line() -> None:
    scenario = from_dict({
        "type": "mesh_strict",
        "commands": [
            "LAUNCHSERVER --id 1 --servername hub --port 24903 --info x",
            "LAUNCHCLIENT --id 7 --serverhost hub --serverport 24903 --username ann --info x",
            'SUBMIT --username ann --job nap --shell "echo dozing; sleep 30"',
            "WAITJOB --username ann --job nap --timeout 0.5",
        ],
    }, name="missed_job_deadline")
    result = run_scenario(scenario, root=ROOT)
    (problem,) = result.problems
    assert "line 4" in problem.message and "did not finish within 0.5 s" in problem.message
    assert "state running" in problem.message
