"""Comparing the machines' final states with a scenario's ``final_state``.

Which keys are compared depends on the scenario type:

* ``CRC_functionality`` (the original runner's rules): servers ``hosts_db``
  and ``status_updates_log``; clients ``connected_user_ids``,
  ``status_updates_log`` and ``chat_messages_log``. Any other key in the file
  (``adjacent_server_ids``, ``adjacent_user_ids``, ...) is ignored.
* ``network_connectivity``: servers ``recvd_messages_asdqw`` (hex of each
  received chunk) and ``sent_messages_asdqw``; clients nothing.
* ``mesh_strict``: every key the file gives, each of which must exist in the
  machine's state: everything in ``MeshServer.snapshot()`` or the client
  state, plus ``first_links`` (``{"host id": first link id}``). A client's
  ``jobs`` and ``files`` compare as ``jobcheck`` says.

In the original types a name that is no launched machine is skipped, as the
original runner skips it; ``mesh_strict`` reports it.

Lists compare as the original runner does: order-insensitive, nothing
missing, nothing unexpected, and equal length. Objects compare key by key;
other values by equality. Long texts compare by size and SHA-256 (``texts``).
A plain v1 client that hit a fatal error fails any scenario.

Pure functions: states in, ``Problem`` list out.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from ..routing import Kind
from .jobcheck import compare_files, compare_jobs
from .problems import Problem
from .texts import comparable

CLIENT_KEYS = ("connected_user_ids", "status_updates_log", "chat_messages_log")

COMPARED_KEYS: dict[str, dict[Kind, tuple[str, ...]] | None] = {
    "CRC_functionality": {Kind.SERVER: ("hosts_db", "status_updates_log"),
                          Kind.CLIENT: CLIENT_KEYS},
    "network_connectivity": {Kind.SERVER: ("recvd_messages_asdqw", "sent_messages_asdqw"),
                             Kind.CLIENT: ()},
    "mesh_strict": None,   # every key the file gives
}

#: Client keys with their own comparison: only the labels / files and the
#: attributes the file names (``jobcheck``).
JOB_KEYS = {"jobs": compare_jobs, "files": compare_files}


def check(scenario_type: str, final_state: dict[str, dict[str, Any]],
          kinds: dict[str, Kind], states: dict[str, dict[str, Any]]) -> list[Problem]:
    """Every difference between ``final_state`` and the machines' ``states``."""
    problems: list[Problem] = []
    for name, expected in final_state.items():
        if name not in states:
            if COMPARED_KEYS[scenario_type] is None:
                problems.append(Problem(name, "", "no machine of this name was launched"))
            continue
        state = with_derived(states[name])
        for key in keys_to_compare(scenario_type, kinds[name], expected):
            if key not in state:
                problems.append(Problem(name, key, "the machine's state has no such key"))
                continue
            if key in JOB_KEYS:
                problems += JOB_KEYS[key](name, expected[key], state[key])
            else:
                problems += compare(name, key, expected[key], state[key])
    for name, state in states.items():
        if state.get("fatal_error"):
            problems.append(Problem(name, "fatal_error",
                                    f"plain CRC v1 client failed: {state['fatal_error']}"))
    return problems


def keys_to_compare(scenario_type: str, kind: Kind, expected: dict[str, Any]) -> list[str]:
    allowed = COMPARED_KEYS[scenario_type]
    if allowed is None:
        return list(expected)
    return [key for key in allowed[kind] if key in expected]


def with_derived(state: dict[str, Any]) -> dict[str, Any]:
    """The state plus keys computed from it (``first_links``)."""
    hosts = state.get("hosts")
    if not isinstance(hosts, dict):
        return state
    links = {str(host_id): info.get("first_link") for host_id, info in hosts.items()}
    return {**state, "first_links": links}


def compare(machine: str, key: str, expected: Any, actual: Any) -> list[Problem]:
    if isinstance(expected, list) and isinstance(actual, list):
        return compare_lists(machine, key, expected, actual)
    if isinstance(expected, dict) and isinstance(actual, dict):
        return compare_objects(machine, key, expected, actual)
    if expected != actual:
        return [Problem(machine, key, "values differ", expected, actual)]
    return []


def compare_lists(machine: str, key: str, expected: list, actual: list) -> list[Problem]:
    """The original runner's rule: same elements either way, same length."""
    want = [_hashable(comparable(e)) for e in expected]
    have = [_hashable(comparable(a)) for a in actual]
    have_set, want_set = set(have), set(want)
    missing = tuple(e for e in want if e not in have_set)
    unexpected = tuple(a for a in have if a not in want_set)
    if missing or unexpected:
        return [Problem(machine, key, "lists differ", want, have, missing, unexpected)]
    if len(want) != len(have):
        return [Problem(machine, key, f"lists differ in length ({len(want)} expected, "
                                      f"{len(have)} found)", want, have)]
    return []


def compare_objects(machine: str, key: str, expected: dict, actual: dict) -> list[Problem]:
    want = {str(k): v for k, v in expected.items()}
    have = {str(k): v for k, v in actual.items()}
    missing = tuple(_items(want, (k for k in want if k not in have or have[k] != want[k])))
    unexpected = tuple(_items(have, (k for k in have if k not in want or have[k] != want[k])))
    if missing or unexpected:
        return [Problem(machine, key, "objects differ", want, have, missing, unexpected)]
    return []


def _items(obj: dict[str, Any], keys: Iterable[str]) -> list[str]:
    return [f"{k}: {json.dumps(obj[k])}" for k in keys]


def _hashable(entry: Any) -> Any:
    try:
        hash(entry)
        return entry
    except TypeError:
        return json.dumps(entry, sort_keys=True)
