"""Guards of the source layout and its import rules (docs/design.md §2).

Imports are read from the source (module-level and lazy ones alike), so a rule cannot be
broken by moving an import into a function.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "platform" / "lifelong"
LIBRARY = {"errors", "files", "locations", "config", "metrics", "memory", "distributed", "models",
           "data", "tracking", "runtime", "streaming", "service"}
EXPERIMENTS = {"experiments.omniglot", "experiments.translation"}
# What each unit may import (besides itself), from the bottom of the stack up.
ALLOWED = {
    "errors": set(),
    "files": set(),
    "locations": set(),
    "metrics": set(),
    "config": {"errors"},
    "memory": {"errors", "config"},
    "data": {"errors", "config"},
    "models": {"errors", "config", "memory"},
    "distributed": {"errors", "files", "locations", "config", "metrics", "memory"},
    "tracking": {"errors", "locations", "config", "metrics", "models"},
    "runtime": {"errors", "locations", "config", "metrics", "memory", "distributed", "tracking"},
    "streaming": {"errors", "files", "locations", "config", "metrics", "memory", "distributed",
                  "models", "data", "tracking"},
    "service": {"errors", "files", "locations", "config", "metrics", "memory", "distributed",
                "models", "data", "tracking", "streaming"},
    "monitor": {"errors"},
    "experiments": set(),  # the package's own __init__: a docstring
}
for _experiment in EXPERIMENTS:
    ALLOWED[_experiment] = LIBRARY
# Ray only in the library code that runs on Ray; MLflow only in tracking.
RAY_ALLOWED = {"distributed", "runtime", "streaming", "service"}
MLFLOW_ALLOWED = {"tracking"}


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(path: Path) -> list[tuple[str, str | None]]:
    """Every import of a file as (module, name imported from it or None)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.module, alias.name) for alias in node.names]
    return found


def module_graph() -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (``from pkg import submodule`` counts
    as an import of the submodule)."""
    known = modules()
    graph = {}
    for name, path in known.items():
        edges = set()
        for module, imported in imports(path):
            if not module.startswith("lifelong"):
                continue
            target = f"{module}.{imported}" if imported and f"{module}.{imported}" in known \
                else module
            if target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def unit(module: str) -> str:
    """The layering unit of a module: its top-level package (an experiment counts alone)."""
    parts = module.split(".")[1:]
    if not parts:
        return "lifelong"
    if parts[0] == "experiments" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_platform_is_a_source_root_without_python_files():
    # A platform/__init__.py or platform/*.py would shadow the standard library's `platform`
    # module, which torch, pytest and Ray import: Ray workers would crash on start.
    assert not list((ROOT / "platform").glob("*.py"))
    assert sorted(p.name for p in (ROOT / "platform").iterdir() if p.is_dir()
                  and p.name != "__pycache__" and not p.name.endswith(".egg-info")) == ["lifelong"]


def test_the_stdlib_platform_module_is_not_shadowed():
    import platform

    assert hasattr(platform, "python_version"), platform.__file__


def test_no_import_circle_between_modules():
    assert cycles(module_graph()) == []


def test_no_import_circle_between_packages():
    graph: dict[str, set[str]] = {}
    for module, targets in module_graph().items():
        graph.setdefault(unit(module), set()).update(unit(t) for t in targets)
    for node, targets in graph.items():
        targets.discard(node)
    assert cycles(graph) == []


def test_every_package_imports_only_what_its_layer_allows():
    offenders = []
    for module, targets in module_graph().items():
        source = unit(module)
        if source in ("cli", "lifelong"):  # the command sits on top; the package face is empty
            continue
        allowed = ALLOWED.get(source)
        assert allowed is not None, f"{module}: a new package needs its place in ALLOWED"
        offenders += [f"{module} -> {t}" for t in sorted(targets)
                      if unit(t) != source and unit(t) not in allowed]
    assert offenders == []


def test_the_library_never_imports_an_experiment_and_experiments_not_each_other():
    offenders = []
    for module, targets in module_graph().items():
        source = unit(module)
        for target in targets:
            if unit(target) in EXPERIMENTS and source != unit(target) and source != "cli":
                offenders.append(f"{module} -> {target}")
    assert offenders == []


def test_the_library_and_jobs_never_import_job_scripts_or_benchmarks():
    # (A benchmark may reuse another benchmark's public helpers: they share a folder.)
    offenders = [f"{path.relative_to(ROOT)} imports {module}"
                 for path in [*PACKAGE.rglob("*.py"), *(ROOT / "jobs").glob("*.py")]
                 for module, _ in imports(path)
                 if module.split(".")[0] in ("jobs", "benchmarks")
                 or module.split(".")[0].startswith("bench_")]
    assert offenders == []


def test_no_module_takes_another_modules_private_names():
    offenders = [f"{path.relative_to(ROOT)}: {module}.{name}"
                 for path in [*PACKAGE.rglob("*.py"), *(ROOT / "jobs").glob("*.py"),
                              *(ROOT / "benchmarks").glob("*.py")]
                 for module, name in imports(path)
                 if module.startswith("lifelong") and name and name.startswith("_")]
    assert offenders == []


def test_ray_and_mlflow_are_imported_only_where_allowed():
    offenders = []
    for module, path in modules().items():
        for imported, _ in imports(path):
            top = imported.split(".")[0]
            if top == "ray" and unit(module) not in RAY_ALLOWED:
                offenders.append(f"{module} imports {imported}")
            if top == "mlflow" and unit(module) not in MLFLOW_ALLOWED:
                offenders.append(f"{module} imports {imported}")
    assert offenders == []


def test_jobs_share_one_entry_point_style():
    # Every job script is the same few lines around `lifelong.cli.job_main`.
    scripts = sorted((ROOT / "jobs").glob("*.py"))
    assert scripts
    for script in scripts:
        assert re.search(r"job_main\(\"\w+\", sys\.argv\[1:\]", script.read_text()), script.name


def test_modules_stay_readable_in_one_sitting():
    too_long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
                if (n := len(p.read_text().splitlines())) > 450}
    assert too_long == {}
