"""A scenario file: loading and checking its shape before anything runs.

A scenario is a JSON object: ``type`` (which comparison applies, see
``checks``), ``commands`` (scenario lines, see ``commands``), ``final_state``
(expected state per machine name) and optionally ``description`` (free
text, ignored). Every line is parsed up front, so a typo fails the file at
once instead of halfway through a run; so are job lines (``jobrequests``) and
the shape of job expectations (``jobcheck``).

A scenario that uses a job command, or gives a server ``--slots`` or
``--load-interval``, is a *job scenario* (``uses_jobs``): its in-process
servers get a job service too.

Reading and checking only: nothing here launches a machine or plays a line
(``runner`` does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .commands import JOB_COMMANDS, Command, CommandError, parse_command
from .jobcheck import expectation_errors
from .jobrequests import labels, request
from .texts import check_expected_entry

#: Scenario types this runner knows (see ``checks.COMPARED_KEYS``).
TYPES = ("CRC_functionality", "network_connectivity", "mesh_strict")


class ScenarioError(ValueError):
    """A scenario file that cannot be run as written."""


@dataclass(frozen=True)
class Scenario:
    name: str
    type: str
    commands: tuple[Command, ...]
    final_state: dict[str, dict[str, Any]]
    description: str = ""
    path: Path | None = field(default=None, compare=False)
    uses_jobs: bool = False


def load(path: Path) -> Scenario:
    """Read and check one scenario file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    except RecursionError:
        raise ScenarioError(f"{path}: cannot read: JSON nested too deeply") from None
    return from_dict(data, name=path.stem, path=path)


def from_dict(data: Any, name: str, path: Path | None = None) -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{name}: a scenario is a JSON object")
    kind = data.get("type")
    if kind not in TYPES:
        raise ScenarioError(f"{name}: type {kind!r} is not one of {', '.join(TYPES)}")
    lines = data.get("commands")
    if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
        raise ScenarioError(f"{name}: commands must be a list of strings")
    try:
        commands = tuple(parse_command(line) for line in lines)
        job_labels = labels(request(c) for c in commands if c.name in JOB_COMMANDS)
    except CommandError as exc:
        raise ScenarioError(f"{name}: {exc}") from None
    final_state = data.get("final_state", {})
    _check_final_state(name, final_state)
    for machine, expected in final_state.items():
        problems = expectation_errors(expected, job_labels.get(machine, {}))
        if problems:
            raise ScenarioError(f"{name}: final_state[{machine!r}]: {'; '.join(problems)}")
    uses_jobs = any(c.name in JOB_COMMANDS or (c.name == "LAUNCHSERVER" and (
        "slots" in c.options or "load_interval" in c.options)) for c in commands)
    description = data.get("description", "")
    return Scenario(name, kind, commands, final_state, str(description), path, uses_jobs)


def _check_final_state(name: str, final_state: Any) -> None:
    if not isinstance(final_state, dict):
        raise ScenarioError(f"{name}: final_state must map machine names to objects")
    for machine, expected in final_state.items():
        if not isinstance(expected, dict):
            raise ScenarioError(f"{name}: final_state[{machine!r}] must be an object")
        for key, value in expected.items():
            if not isinstance(value, list):
                continue
            for entry in value:
                problem = check_expected_entry(entry)
                if problem:
                    raise ScenarioError(f"{name}: final_state[{machine!r}][{key!r}]: {problem}")
