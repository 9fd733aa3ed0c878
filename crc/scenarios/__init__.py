"""The scenario test manager: scenario files in, verdicts out.

Modules: ``commands`` (tokenising scenario lines), ``scenario`` (loading a
file), ``texts`` (generated and long texts and files), ``machines`` (servers
and clients in threads or processes), ``plain_client`` (a v1-only witness
client), ``checks``
(comparing states) and ``problems`` (what differs), ``runner`` (playing one
scenario), ``ui`` and ``cli`` (the ``TestManager.py`` front end). Jobs:
``jobrequests`` (job lines as typed requests), ``jobsteps`` (carrying them
out), ``jobs`` (a client's working directory, jobs and builds) and
``jobcheck`` (expected jobs and files). See docs/scenarios.md.

The top layer: it drives servers and clients (in threads of this process or
as processes) and nothing else in ``crc`` imports it; ``crc.entry`` loads its
command line by name.
"""

from .checks import Problem, check
from .runner import ScenarioResult, run_scenario
from .scenario import Scenario, ScenarioError, load

__all__ = ["Problem", "Scenario", "ScenarioError", "ScenarioResult", "check", "load",
           "run_scenario"]
