"""The suite's phase report: where a run's time goes, by kind of test (a pytest plugin).

Every test belongs to one phase (its markers and module decide, ``phase_of``); the report sums
each phase's test time (setup + call + teardown, as ``--durations`` counts it) and takes the
shared builds out of the test that happened to trigger them: the tiny pipeline and the control
trainings (``tests/builds.py``) are phases of their own. With several workers (pytest-xdist) the
phases overlap in time: their sum is worker time, and the wall time of the session is printed
beside it. ``.ci/run`` prints the same table and adds its own phases (Debian installs, the
environment, lint); the JSON goes to ``$PHASES_JSON`` when it is set, with every test's worker,
start and seconds (the timeline: which test a worker waited on, what ran beside a shared build).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path

import pytest

BUILDS = "builds"  # user property: [(name, seconds)] of shared builds done during this test

# (phase, how a test is recognised); the first match wins
PHASES = (
    "fast tier",
    "Docker",
    "browser",
    "Helm",
    "PostgreSQL",
    "bench",
    "integration (Triton + API)",
    "pipeline and trainings",
)
LONG = 1.0  # seconds: shorter tests stay out of the JSON's timeline
_done_builds: list[tuple[str, float]] = []  # builds finished in this process, not yet reported


def record_build(name: str, seconds: float) -> None:
    """Called by a shared build (tests/builds.py) that actually ran (not a cache hit)."""
    _done_builds.append((name, seconds))


def phase_of(item: pytest.Item) -> str:
    marks = {m.name for m in item.iter_markers()}
    module = Path(str(item.fspath)).name
    if "slow" not in marks:
        return "fast tier"
    if "docker" in marks:
        return "Docker"
    if "browser" in marks:
        return "browser"
    if module == "test_helm_chart.py":
        return "Helm"
    if "postgres_url" in getattr(item, "fixturenames", ()):
        return "PostgreSQL"
    if "bench" in marks:
        return "bench"
    if "integration" in marks:
        return "integration (Triton + API)"
    return "pipeline and trainings"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Each report carries its test's phase and the shared builds it waited for."""
    if call.when == "setup" and not any(k == "phase" for k, _ in item.user_properties):
        item.user_properties.append(("phase", phase_of(item)))
    if _done_builds:
        item.user_properties.append((BUILDS, list(_done_builds)))
        _done_builds.clear()
    yield


class PhaseReport:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.tests: dict[str, set[str]] = defaultdict(set)
        self.started = time.monotonic()
        self._builds_seen: set[tuple[str, str]] = set()
        self.timeline: dict[str, dict] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        phase = props.get("phase", "fast tier")
        spent = report.duration
        for name, seconds in props.get(BUILDS, []):
            if (report.nodeid, name) in self._builds_seen:  # repeated on later reports
                continue
            self._builds_seen.add((report.nodeid, name))
            self.seconds[name] += seconds
            spent -= seconds
        self.seconds[phase] += max(spent, 0.0)
        self.tests[phase].add(report.nodeid)
        self._place(report, phase)

    def _place(self, report: pytest.TestReport, phase: str) -> None:
        node = getattr(report, "node", None)  # the xdist worker that ran it, on the controller
        worker = getattr(getattr(node, "gateway", None), "id", "main")
        row = self.timeline.setdefault(report.nodeid, {"test": report.nodeid, "phase": phase,
                                                       "worker": worker, "start": report.start,
                                                       "seconds": 0.0})  # fmt: skip
        row["start"] = min(row["start"], report.start)
        row["seconds"] = round(row["seconds"] + report.duration, 2)

    def rows(self) -> list[tuple[str, float, int]]:
        order = [*PHASES, *sorted(k for k in self.seconds if k not in PHASES)]
        return [
            (p, self.seconds[p], len(self.tests.get(p, ()))) for p in order if p in self.seconds
        ]

    def pytest_terminal_summary(self, terminalreporter) -> None:
        wall = time.monotonic() - self.started
        rows = self.rows()
        tr = terminalreporter
        tr.section("phases (test time; shared builds apart)")
        for phase, seconds, count in rows:
            tests = f"{count} tests" if count else "shared build"
            tr.write_line(f"{phase:<34} {_minutes(seconds):>9}  {tests}")
        total = sum(s for _, s, _ in rows)
        tr.write_line(f"{'sum of the phases':<34} {_minutes(total):>9}")
        tr.write_line(f"{'pytest wall time':<34} {_minutes(wall):>9}")
        target = os.environ.get("PHASES_JSON")
        if target:
            payload = {"wall_s": round(wall, 1),
                       "phases": [{"phase": p, "seconds": round(s, 1), "tests": n}
                                  for p, s, n in rows],
                       "timeline": self._timeline()}  # fmt: skip
            Path(target).write_text(json.dumps(payload, indent=2) + "\n")

    def _timeline(self) -> list[dict]:
        """Tests of at least ``LONG`` seconds, by start, seconds from the first test's start."""
        rows = sorted(self.timeline.values(), key=lambda r: r["start"])
        t0 = rows[0]["start"] if rows else 0.0
        return [{**r, "start": round(r["start"] - t0, 1)} for r in rows if r["seconds"] >= LONG]


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} m {seconds % 60:04.1f} s"


def pytest_configure(config: pytest.Config) -> None:
    # one report, in the process that talks to the terminal (not in xdist's workers)
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(PhaseReport(), "imgcls-phase-report")
