"""The import graph of the project's own packages has no cycle: no module imports one that
imports it back, at run time or for type checking (fast tier, read from the source, nothing
imported)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.builds import REPO

PACKAGES = {
    "imgcls": "services/common/imgcls",
    "model_preparation": "services/model-preparation/model_preparation",
    "imgcls_api": "services/api/imgcls_api",
    "imgcls_batch": "services/batch/imgcls_batch",
    "imgcls_bench": "services/bench/imgcls_bench",
    "local_stack": "services/local-stack/local_stack",
}


def modules(root: Path = REPO) -> dict[str, Path]:
    """Dotted name → file, for every module of ``PACKAGES``."""
    found = {}
    for folder in PACKAGES.values():
        base = root / folder
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _target(name: str, known: dict) -> str | None:
    """``name`` or its closest enclosing module that is ours."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(name: str, path: Path, known: dict) -> set[str]:
    """Our modules that ``name`` imports anywhere in its file (``from . import x`` is x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                     for a in node.names]  # fmt: skip
        out |= {t for t in (_target(n, known) for n in names) if t and t != name}
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_finder_sees_a_cycle_and_a_tree():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_reader_follows_relative_and_type_checking_imports(tmp_path):
    pkg = tmp_path / "services/common/imgcls"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from .b import X\n")  # fmt: skip
    (pkg / "b.py").write_text("from . import a\nimport imgcls.c\n")
    (pkg / "c.py").write_text("import os\n")
    known = modules(tmp_path)
    graph = {m: imports(m, p, known) for m, p in known.items()}
    assert graph["imgcls.a"] == {"imgcls.b"} and graph["imgcls.b"] == {"imgcls.a", "imgcls.c"}
    assert cycles(graph) == [["imgcls.a", "imgcls.b"]]


def test_no_module_imports_one_that_imports_it_back():
    known = modules()
    graph = {m: imports(m, p, known) for m, p in known.items()}
    assert len(known) > 50 and graph["model_preparation.train"]  # it read the real tree
    assert cycles(graph) == [], "import cycles (move what both need into a module of its own)"


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_the_serving_core_and_the_batch_job_need_no_flask():
    """``imgcls.gateway`` is the serving core without Flask: neither it nor the batch job reaches
    the web app (read from the source here; ``sys.modules`` in a fresh interpreter below)."""
    known = modules()
    graph = {m: imports(m, p, known) for m, p in known.items()}
    starts = [m for m in known if m.startswith(("imgcls.gateway", "imgcls_batch"))]
    assert "imgcls.gateway.client" in starts and "imgcls_batch.classify" in starts
    web = {m: sorted(w for w in reachable(graph, m) if w.startswith("imgcls_api")) for m in starts}
    assert not any(web.values()), {m: w for m, w in web.items() if w}
    assert reachable({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "a") == {"a", "b", "c"}


def test_importing_the_batch_job_loads_no_flask():
    import subprocess
    import sys

    code = ("import sys, imgcls_batch.__main__, imgcls.gateway.memory; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug', "
            "'imgcls_api')))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


def _defined(path: Path) -> set[str]:
    """Every name a module binds anywhere in its file (functions, classes, assignments,
    imports): what ``from it import name`` can find."""
    names: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(n.name)
        elif isinstance(n, ast.Assign):
            names.update(t.id for t in n.targets if isinstance(t, ast.Name))
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            names.add(n.target.id)
        elif isinstance(n, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in n.names)
    return names


def unresolved(files: list[Path], known: dict[str, Path]) -> list[str]:
    """``file: module.name`` for each absolute import of our packages that this tree lacks."""
    missing = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                if node.module.split(".")[0] not in PACKAGES:
                    continue
                if node.module not in known:
                    missing.append(f"{path.name}: {node.module}")
                    continue
                names = _defined(known[node.module])
                missing += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                            if a.name not in names and f"{node.module}.{a.name}" not in known]  # fmt: skip
            elif isinstance(node, ast.Import):
                missing += [f"{path.name}: {a.name}" for a in node.names
                            if a.name.split(".")[0] in PACKAGES and a.name not in known]  # fmt: skip
    return missing


def test_every_import_of_our_modules_resolves_in_this_tree():
    """A module moved or renamed can still import on a machine whose venv holds an editable
    install of an older checkout (its finder answers for what this tree lacks): read the
    source instead (the CI run of 2026-12-04 02:25 met exactly that)."""
    known = modules()
    files = [*known.values(), *sorted((REPO / "tests").glob("*.py"))]
    assert unresolved(files, known) == []


def test_the_resolver_sees_a_moved_module_and_a_missing_name(tmp_path):
    pkg = tmp_path / "services/common/imgcls"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("X = 1\n")
    user = tmp_path / "user.py"
    user.write_text("from imgcls.a import X, Y\nfrom imgcls.gone import Z\nimport imgcls.a\n")
    known = modules(tmp_path)
    assert unresolved([user], known) == ["user.py: imgcls.a.Y", "user.py: imgcls.gone"]
