"""Expected jobs and files: checking their shape up front, comparing them after.

A client's ``final_state`` may carry two job keys (docs/scenarios.md, "Jobs"):

* ``jobs``: label -> the attributes expected of that job or build. Only the
  labels and attributes given are compared. ``runs`` (of a job) and
  ``actions`` (of a build) map a server or action name to attributes in the
  same way. ``servers`` compares as a whole object, lists compare in order,
  other values by equality.
* ``files``: file name (relative to the client's working directory) ->
  attributes (``exists``, ``size``, ``sha256``, ``mode``, ``text``); a file
  that is not there has only ``{"exists": false}``.

A text attribute (``error``, ``output``, ``stdout``, ``stderr``, ``text``)
is expected as a string (exact), as ``{"contains": "..."}``, or as
``{"size": N, "sha256": "hex"}`` for a long text (see ``texts``).

Pure functions: expectations and states in, messages or ``Problem`` list out.
"""

from __future__ import annotations

import re
from typing import Any

from .problems import Problem
from .texts import LONG_TEXT, comparable

SUBMIT_KEYS = frozenset({"kind", "state", "exit", "error", "output", "stdout", "stderr",
                         "servers", "ran_on", "runs", "returned", "output_before_exit"})
RUN_KEYS = frozenset({"state", "exit", "error", "output", "stdout", "stderr", "returned"})
RAKE_KEYS = frozenset({"kind", "state", "exit", "errors", "actionsets", "failed", "actions",
                       "servers", "output"})
ACTION_KEYS = frozenset({"state", "exit", "error", "server", "output", "stdout", "stderr"})
FILE_KEYS = frozenset({"exists", "size", "sha256", "mode", "text"})
TEXT_KEYS = frozenset({"error", "output", "stdout", "stderr", "text"})
#: Attributes holding name -> attributes maps, and the attributes allowed inside.
NESTED = {"runs": RUN_KEYS, "actions": ACTION_KEYS}
#: Label kinds by the command that defines them.
KIND_KEYS = {"SUBMIT": SUBMIT_KEYS, "RAKE": RAKE_KEYS}
_MODE = re.compile(r"^[0-7]{3,4}$")


# -- the shape of expectations (before anything runs) -------------------------------------


def expectation_errors(expected: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """What is wrong with one client's ``jobs`` / ``files`` expectations.

    ``labels`` maps each label the client's commands define to the command
    defining it (``SUBMIT`` or ``RAKE``).
    """
    errors: list[str] = []
    jobs = expected.get("jobs")
    if jobs is not None:
        if not isinstance(jobs, dict):
            return ["'jobs' must map job labels to objects"]
        for label, want in jobs.items():
            kind = labels.get(label)
            if kind is None:
                errors.append(f"jobs[{label!r}]: no SUBMIT or RAKE of this client has this label")
            elif not isinstance(want, dict):
                errors.append(f"jobs[{label!r}] must be an object")
            else:
                errors += _attribute_errors(f"jobs[{label!r}]", want, KIND_KEYS[kind])
    files = expected.get("files")
    if files is not None:
        if not isinstance(files, dict):
            return errors + ["'files' must map file names to objects"]
        for name, want in files.items():
            if not isinstance(want, dict):
                errors.append(f"files[{name!r}] must be an object")
                continue
            errors += _attribute_errors(f"files[{name!r}]", want, FILE_KEYS)
            if want.get("exists") is False and len(want) > 1:
                errors.append(f"files[{name!r}]: a file expected not to exist has no other "
                              f"attributes")
            if "mode" in want and not (isinstance(want["mode"], str) and _MODE.match(want["mode"])):
                errors.append(f"files[{name!r}].mode must be octal text such as \"0755\"")
    return errors


def _attribute_errors(where: str, want: dict[str, Any], allowed: frozenset[str]) -> list[str]:
    errors = []
    for key, value in want.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            errors.append(f"{where}: unknown attribute {key!r} (known: {known})")
        elif key in NESTED:
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                errors.append(f"{where}.{key} must map names to objects")
                continue
            for name, inner in value.items():
                errors += _attribute_errors(f"{where}.{key}[{name!r}]", inner, NESTED[key])
        elif key in TEXT_KEYS and isinstance(value, dict):
            problem = _text_pattern_error(value)
            if problem:
                errors.append(f"{where}.{key}: {problem}")
    return errors


def _text_pattern_error(value: dict[str, Any]) -> str | None:
    if set(value) == {"contains"} and isinstance(value["contains"], str):
        return None
    if set(value) == {"size", "sha256"}:
        if not isinstance(value["size"], int) or value["size"] <= LONG_TEXT:
            return f"a text digest is only for texts over {LONG_TEXT} bytes"
        return None
    return "a text is a string, {\"contains\": TEXT} or {\"size\": N, \"sha256\": HEX}"


# -- comparing (after the run) -------------------------------------------------------------


def compare_jobs(machine: str, expected: dict[str, Any], actual: Any) -> list[Problem]:
    """Each expected label's attributes against the client's ``jobs`` state."""
    actual = actual if isinstance(actual, dict) else {}
    problems: list[Problem] = []
    for label, want in expected.items():
        have = actual.get(label)
        if have is None:
            problems.append(Problem(machine, f"jobs.{label}", "this client ran no job with "
                                    "this label"))
            continue
        problems += _compare_attributes(machine, f"jobs.{label}", want, have)
    return problems


def compare_files(machine: str, expected: dict[str, Any], actual: Any) -> list[Problem]:
    """Each expected file's attributes against the client's ``files`` state."""
    actual = actual if isinstance(actual, dict) else {}
    problems: list[Problem] = []
    for name, want in expected.items():
        have = actual.get(name, {"exists": False})
        if not have["exists"] and want.get("exists", True):
            problems.append(Problem(machine, f"files.{name}",
                                    "no such file in the client's working directory"))
            continue
        problems += _compare_attributes(machine, f"files.{name}", want, have)
    return problems


def _compare_attributes(machine: str, where: str, want: dict[str, Any],
                        have: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for key, value in want.items():
        key_path = f"{where}.{key}"
        actual = have.get(key)
        if key in NESTED:
            problems += _compare_nested(machine, key_path, value, actual or {})
        elif key in TEXT_KEYS:
            problems += _compare_text(machine, key_path, value, actual)
        elif isinstance(value, dict) and isinstance(actual, dict):
            problems += _compare_object(machine, key_path, value, actual)
        elif value != actual:
            problems.append(Problem(machine, key_path, "values differ", value, actual))
    return problems


def _compare_nested(machine: str, where: str, want: dict[str, Any],
                    have: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for name, attrs in want.items():
        if name not in have:
            problems.append(Problem(machine, f"{where}.{name}", f"no such entry (there are: "
                                    f"{', '.join(sorted(have)) or 'none'})"))
            continue
        problems += _compare_attributes(machine, f"{where}.{name}", attrs, have[name])
    return problems


def _compare_text(machine: str, where: str, want: Any, have: Any) -> list[Problem]:
    if not isinstance(have, str):
        return [Problem(machine, where, "no text", want, have)]
    if isinstance(want, dict) and "contains" in want:
        if want["contains"] in have:
            return []
        return [Problem(machine, where, f"text does not contain {want['contains']!r}",
                        want, comparable(have))]
    if comparable(want) != comparable(have):
        return [Problem(machine, where, "texts differ", comparable(want), comparable(have))]
    return []


def _compare_object(machine: str, where: str, want: dict[str, Any],
                    have: dict[str, Any]) -> list[Problem]:
    """Whole-object comparison (``servers``): nothing missing, nothing more."""
    want_s = {str(k): v for k, v in want.items()}
    have_s = {str(k): v for k, v in have.items()}
    missing = tuple(f"{k}: {v!r}" for k, v in want_s.items() if have_s.get(k) != v)
    unexpected = tuple(f"{k}: {v!r}" for k, v in have_s.items() if want_s.get(k) != v)
    if missing or unexpected:
        return [Problem(machine, where, "objects differ", want_s, have_s, missing, unexpected)]
    return []

