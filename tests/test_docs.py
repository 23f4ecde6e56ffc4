"""The docs name only what exists: every ``python -m`` module, ``make`` target, API route,
``params.yaml`` key and ``#anchor`` link in README.md and docs/*.md (fast tier, no server).

A renamed module or target used to live on in the docs for weeks (``model_preparation.bootstrap``
after it moved under ``tools/``); these checks fail the change that renames it instead."""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.builds import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
FILE_SUFFIX = re.compile(r"\.(py|ya?ml|json|jsonl|md|png|csv|txt|onnx|keras|npz|lock|dvc|pbtxt)$")


def _code(text: str) -> list[str]:
    """What the doc writes as code: fenced blocks and inline spans (prose may say "make sure")."""
    return [*FENCE.findall(text), *SPAN.findall(FENCE.sub("", text))]


def _named(pattern: str) -> list[tuple[str, str]]:
    """(doc, name) for every match of ``pattern``'s first group in the docs' code."""
    rx = re.compile(pattern)
    return [(doc.relative_to(REPO).as_posix(), m.group(1))
            for doc in DOCS for code in _code(doc.read_text("utf-8"))
            for m in rx.finditer(code)]  # fmt: skip


@cache
def make_targets() -> set[str]:
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\- ]+):(?!=)", line)
        if m:
            targets.update(m.group(1).split())
    return targets


def test_every_make_target_named_exists():
    missing = {(doc, t) for doc, t in _named(r"\bmake ([a-z][\w-]*)") if t not in make_targets()}
    assert not missing, f"make targets the docs name but the Makefile lacks: {sorted(missing)}"


def test_every_python_module_named_exists():
    missing = set()
    for doc, module in _named(r"python3? -m ([A-Za-z_][\w.]*\w)"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.add((doc, module))
    assert not missing, f"modules the docs run but nothing provides: {sorted(missing)}"


@cache
def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@cache
def helm_values() -> dict:
    return yaml.safe_load((REPO / "deploy/helm/imgcls/values.yaml").read_text())


def _has_key(path: list[str]) -> bool:
    """In params.yaml, or in the Helm chart's values (``lifecycle.action`` is the chart's)."""
    return any(_in(tree, path) for tree in (params(), helm_values()))


def _in(node: dict, path: list[str]) -> bool:
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_params_key_named_exists():
    """``section.key`` (and deeper) where ``section`` is one of params.yaml's sections, in
    params.yaml or in the Helm values (several sections share a name with the chart's)."""
    missing = set()
    for doc, name in _named(r"(?<![\w./-])([a-z_]+(?:\.[a-z_0-9*]+)+)(?![\w/(-])"):
        parts = name.split(".")
        if parts[0] not in params() or FILE_SUFFIX.search(name) or "*" in name:
            continue
        if not _has_key(parts):
            missing.add((doc, name))
    assert not missing, f"settings the docs name but params.yaml and Helm lack: {sorted(missing)}"


def _routes() -> set[str]:
    from imgcls_api import create_app

    app = create_app({"triton_url": "127.0.0.1:1"})
    return {re.sub(r"<[^>]+>", "{}", rule.rule) for rule in app.url_map.iter_rules()}


def test_every_api_route_named_exists():
    """``GET /path`` or ``POST /path`` as code, and the curl commands' localhost:5000 paths."""
    routes = _routes()
    named = _named(r"\b(?:GET|POST|PUT|DELETE) (/[\w/{}<>.-]*)") + _named(
        r"localhost:5000(/[\w/.-]*)"
    )
    missing = set()
    for doc, path in named:
        path = re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path.rstrip("/.") or "/")
        if path.startswith("/v2/"):  # Triton's own API, not ours
            continue
        if path not in routes:
            missing.add((doc, path))
    assert not missing, f"routes the docs name but the API lacks: {sorted(missing)}"


# The page, its files and the API's description of itself: served, but not API operations.
NOT_OPERATIONS = {"/", "/docs", "/docs/assets/{}", "/openapi.json", "/web/{}"}


def test_openapi_describes_every_route_and_only_routes():
    """Each route's methods are the operations ``/openapi.json`` lists for its path, and every
    path it lists is a route: a route added without its description fails here."""
    from imgcls_api import create_app

    app = create_app({"triton_url": "127.0.0.1:1"})
    served: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<[^>]+>", "{}", rule.rule)
        if path not in NOT_OPERATIONS:
            served.setdefault(path, set()).update(
                m.lower() for m in rule.methods - {"HEAD", "OPTIONS"}
            )
    described = app.test_client().get("/openapi.json").get_json()["paths"]
    described = {re.sub(r"\{[^}]+\}", "{}", p): set(ops) & {"get", "post", "put", "delete", "patch"}
                 for p, ops in described.items()}  # fmt: skip
    assert described == served


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces → -."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(doc: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#+ (.+)$", FENCE.sub("", doc.read_text("utf-8")), re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_slug_is_githubs():
    assert slug("Changing the model in production") == "changing-the-model-in-production"
    assert slug("Without Docker (`make up`)") == "without-docker-make-up"
    assert slug("What it looked like (the demo, 2026-12-01, this 2-core machine)") == (
        "what-it-looked-like-the-demo-2026-12-01-this-2-core-machine"
    )


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_anchor_link_resolves(doc: Path):
    broken = []
    text = FENCE.sub("", doc.read_text("utf-8"))
    for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", text):
        if target.startswith("http"):
            continue
        linked = (doc.parent / target).resolve() if target else doc
        if not linked.is_file() or anchor not in anchors(linked):
            broken.append(f"{target}#{anchor}")
    assert not broken, f"{doc.name}: links to anchors that do not exist: {broken}"


README_MAX_LINES = 450  # what it is, the two commands, the first curl, the map, settings, links


def test_the_readme_stays_a_front_page():
    """Deep dives, transcripts and measurement tables live in docs/ (the README links them)."""
    lines = (REPO / "README.md").read_text("utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move a section to docs/"
    )


# Figures the docs quote from the committed reports (artifacts/reports/, the demo model's): each
# pattern must be found, and every figure it finds must be the report's, at the digits quoted.
QUOTED = [
    ("README.md", r"held-out \*\*(\d\.\d{4})\*\*", "metrics.json", ["accuracy"]),
    ("README.md", r"\*\*(\d\.\d{3})\*\* on average over the shift stage", "shift.json", ["mean", "fp32"]),
    ("README.md", r"ViM, AUROC (\d\.\d{3}) on new shapes", "ood.json", ["methods", "vim", "near", "auroc"]),
    ("README.md", r"new shapes and (\d\.\d{3}) on photos", "ood.json", ["methods", "vim", "photos", "auroc"]),
    ("docs/monitoring.md", r"held-out\s+accuracy (\d\.\d{4}), 64²", "metrics.json", ["accuracy"]),
    ("docs/monitoring.md", r"accuracy \d\.\d{4}, 64², (\d+) held-out", "metrics.json", ["num_images"]),
    ("docs/monitoring.md", r"flagged; near (\d+\.\d) %, photos", "ood.json", ["either_flag", "near"]),
    ("docs/monitoring.md", r"photos (\d+\.\d) %, flat", "ood.json", ["either_flag", "photos"]),
    ("docs/monitoring.md", r"(\d\.\d) % of held-out images flagged", "ood.json", ["either_flag", "held_out"]),
]  # fmt: skip


def misquoted(text: str, pattern: str, value: float) -> list[str]:
    """The figures ``pattern`` finds in ``text`` that are not ``value`` at their own digits (a
    figure with a % sign: ``value`` × 100); [""] when it finds none."""
    found = re.findall(pattern, text)
    if not found:
        return [""]
    wrong = []
    for figure in found:
        digits = len(figure.partition(".")[2])
        scale = 100 if re.search(re.escape(figure) + r" %", text) else 1
        if figure != f"{value * scale:.{digits}f}":
            wrong.append(figure)
    return wrong


@pytest.mark.parametrize(("doc", "pattern", "report", "path"), QUOTED)
def test_figures_quoted_from_the_committed_reports_are_theirs(doc, pattern, report, path):
    import json

    value = json.loads((REPO / "artifacts/reports" / report).read_text())
    for key in path:
        value = value[key]
    assert misquoted((REPO / doc).read_text(), pattern, value) == [], (doc, pattern, report, value)


def test_the_quote_check_sees_a_stale_figure_and_a_missing_one():
    assert misquoted("held-out **0.9966** and **0.9801**", r"\*\*(\d\.\d{4})\*\*", 0.99661) == [
        "0.9801"
    ]
    assert misquoted("photos 88.4 %, flat", r"photos (\d+\.\d) %", 0.8842) == []
    assert misquoted("no figure here", r"held-out (\d\.\d{4})", 0.9) == [""]


ENV_NAME = re.compile(r"^([A-Z][A-Z0-9]*_[A-Z0-9_]+)(?:=\S*)?$")  # CAPTURE_DIR, BATCH_SLOTS=0


@cache
def code_text() -> str:
    """Every tracked file that is not prose or a report: where a setting's name must appear."""
    import subprocess

    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout
    paths = [
        REPO / f for f in listed.split() if not f.endswith(".md") and not f.startswith("artifacts/")
    ]
    return "\n".join(p.read_text("utf-8", errors="ignore") for p in paths
                     if p.is_file() and p.stat().st_size < 2_000_000)  # fmt: skip


def settings_names() -> set[str]:
    """The API's and gunicorn's settings, read from the environment by their field names."""
    import dataclasses

    from imgcls_api.settings import ServerSettings, Settings

    return {f.name.upper() for cls in (Settings, ServerSettings) for f in dataclasses.fields(cls)}


def unknown_env_names(
    named: list[tuple[str, str]], known: set[str], code: str
) -> list[tuple[str, str]]:
    """The (doc, NAME) pairs whose NAME is neither a setting nor anywhere in the code."""
    return [(doc, name) for doc, name in named
            if name not in known and not re.search(rf"\b{name}\b", code)]  # fmt: skip


def test_every_environment_variable_named_exists():
    """A name like `CAPTURE_DIR` or `BATCH_SLOTS=0` in the docs' code spans is a setting of the
    API or gunicorn, or appears in the code, the Makefile, compose, Helm or CI that reads it."""
    named = [(doc, m.group(1)) for doc, span in _named(r"^(.+)$")
             for m in [ENV_NAME.match(span.strip())] if m]  # fmt: skip
    assert len(named) > 20, "the docs name settings: the reader found none"
    assert unknown_env_names(named, settings_names(), code_text()) == []


def test_the_env_check_sees_a_name_nothing_reads():
    named = [("README.md", "BATCH_SLOTS"), ("README.md", "CAPTURE_DIRECTORY")]
    assert unknown_env_names(named, {"BATCH_SLOTS"}, "os.environ['CAPTURE_DIR']") == [
        ("README.md", "CAPTURE_DIRECTORY")
    ]
