"""What the scenario manager shows: live progress, a summary table, failures.

The only module of ``crc.scenarios`` that writes to the terminal (through
``rich``); it runs scenarios through ``runner.run_scenario`` and presents the
results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
)
from rich.table import Table

from .checks import Problem
from .runner import ScenarioResult, run_scenario
from .scenario import ScenarioError, load

#: Longest list shown whole in a failure report; longer ones are cut.
SHOW_ITEMS = 40


def run_all(paths: Sequence[Path], *, processes: bool, root: Path,
            console: Console | None = None) -> list[ScenarioResult]:
    """Run ``paths`` one after another with live progress; print the verdicts."""
    console = console or Console()
    results: list[ScenarioResult] = []
    columns = (SpinnerColumn(), TextColumn("[bold]{task.fields[scenario]}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.description}"))
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("", total=len(paths), scenario="")
        for path in paths:
            progress.update(task, scenario=path.stem, description="")

            def step(index: int, total: int, line: str) -> None:
                progress.update(task, description=escape(f"[{index}/{total}] {line[:70]}"))

            result = run_scenario(path, processes=processes, root=root, progress=step)
            results.append(result)
            progress.console.print(_verdict(result))
            progress.advance(task)
    show_summary(console, results)
    for result in results:
        if not result.passed:
            show_failure(console, result)
    return results


def _verdict(result: ScenarioResult) -> str:
    mark = "[green]PASS[/]" if result.passed else "[bold red]FAIL[/]"
    return f"{mark} {escape(result.name)} [dim]({result.seconds:.1f} s, {result.mode})[/]"


def show_summary(console: Console, results: Sequence[ScenarioResult]) -> None:
    table = Table(title="Scenarios")
    table.add_column("scenario")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    table.add_column("mode")
    for r in results:
        table.add_row(escape(r.name), "[green]pass[/]" if r.passed else "[bold red]FAIL[/]",
                      f"{r.seconds:.1f}", r.mode)
    passed = sum(r.passed for r in results)
    total = sum(r.seconds for r in results)
    table.caption = f"{passed}/{len(results)} passed in {total:.1f} s"
    console.print(table)


def show_failure(console: Console, result: ScenarioResult) -> None:
    table = Table(title=f"[bold red]{escape(result.name)}[/]: what differs",
                  show_lines=True, expand=True)
    for column in ("machine", "key", "problem", "expected", "actual"):
        table.add_column(column, overflow="fold")
    for p in result.problems:
        table.add_row(escape(p.machine), escape(p.key), escape(_problem_text(p)),
                      escape(_show(p.expected)), escape(_show(p.actual)))
    console.print(table)
    if result.log_file is not None:
        console.print(f"log: {escape(str(result.log_file))}")


def _problem_text(p: Problem) -> str:
    lines = [p.message]
    if p.missing:
        lines.append(f"missing: {_show(list(p.missing))}")
    if p.unexpected:
        lines.append(f"unexpected: {_show(list(p.unexpected))}")
    return "\n".join(lines)


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list) and len(value) > SHOW_ITEMS:
        return repr(value[:SHOW_ITEMS])[:-1] + f", ... {len(value) - SHOW_ITEMS} more]"
    return repr(value)


def list_scenarios(console: Console, paths: Sequence[Path]) -> None:
    table = Table(title="Scenario files")
    table.add_column("scenario")
    table.add_column("type")
    table.add_column("description", overflow="fold")
    for path in paths:
        try:
            scenario = load(path)
            table.add_row(escape(path.stem), scenario.type, escape(scenario.description))
        except ScenarioError as exc:
            table.add_row(escape(path.stem), "[red]invalid[/]", escape(str(exc)))
    console.print(table)


def show_no_match(console: Console, directory: Path, prefixes: Sequence[str]) -> None:
    wanted = " ".join(prefixes) or "*"
    console.print(f"[red]no scenario file in {escape(str(directory))} matches "
                  f"{escape(wanted)}[/]")
