"""Guards of the source layout (DESIGN.md section 2)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "platform" / "lifelong"
# Ray may be imported only by the distributed library code and the training/streaming glue.
RAY_ALLOWED = {"distributed", "training", "streaming"}


def test_platform_is_a_source_root_without_python_files():
    # A platform/__init__.py or platform/*.py would shadow the standard library's `platform`
    # module, which torch, pytest and Ray import: Ray workers would crash on start.
    assert not list((ROOT / "platform").glob("*.py"))
    assert sorted(p.name for p in (ROOT / "platform").iterdir() if p.is_dir()
                  and p.name != "__pycache__" and not p.name.endswith(".egg-info")) == ["lifelong"]


def test_the_stdlib_platform_module_is_not_shadowed():
    import platform

    assert hasattr(platform, "python_version"), platform.__file__


def test_ray_is_imported_only_where_allowed():
    pattern = re.compile(r"^\s*(import ray|from ray)", re.MULTILINE)
    offenders = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if pattern.search(path.read_text())
                 and path.relative_to(PACKAGE).parts[0] not in RAY_ALLOWED]
    assert offenders == []


def test_modules_stay_readable_in_one_sitting():
    too_long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
                if (n := len(p.read_text().splitlines())) > 450}
    assert too_long == {}
