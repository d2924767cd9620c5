"""No stored file is deserialised by a loader that can run code: every ``torch.load`` passes
``weights_only=True``, every ``np.load`` ``allow_pickle=False``, YAML is read with ``safe_load``,
no MLflow model is loaded through its flavor (its file may be a pickle), and nothing imports
pickle-like modules (pickle, cloudpickle, dill, marshal, shelve, joblib)."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
SOURCES = [REPO / "platform" / "lifelong", REPO / "jobs", REPO / "benchmarks"]
UNSAFE_MODULES = {"pickle", "cPickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}
UNSAFE_CALLS = {"yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all",
                "yaml.unsafe_load_all", "yaml.full_load_all", "pd.read_pickle",
                "pandas.read_pickle", "torch.jit.load",
                # an MLflow model's file may be a pickle: the platform reads the checkpoint
                # beside it (lifelong.tracking.models), never the model file itself
                "mlflow.pytorch.load_model", "mlflow.pyfunc.load_model",
                "mlflow.models.Model.load_model"}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return "?"


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<not a constant>"
    return "<missing>"


def unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """Every unsafe deserialisation in ``source``, as ``file:line: what``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""])
            found += [f"{where}: imports {m}" for m in modules
                      if m.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        if name in UNSAFE_CALLS:
            found.append(f"{where}: {name}")
        elif name.endswith("torch.load") or name == "torch.load":
            if _keyword(node, "weights_only") is not True:
                found.append(f"{where}: torch.load without weights_only=True")
        elif name in ("np.load", "numpy.load"):
            if _keyword(node, "allow_pickle") is not False:
                found.append(f"{where}: np.load without allow_pickle=False")
    return found


def test_the_package_jobs_and_benchmarks_deserialise_nothing_unsafely():
    files = [f for root in SOURCES for f in sorted(root.rglob("*.py"))]
    assert len(files) > 50
    found = [hit for f in files
             for hit in unsafe_calls(f.read_text(), str(f.relative_to(REPO)))]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load('x.pt')",
    "import torch\ntorch.load('x.pt', weights_only=False)",
    "import numpy as np\nnp.load('x.npz', allow_pickle=True)",
    "import numpy as np\nnp.load('x.npy')",
    "import yaml\nyaml.load(open('c.yaml'), Loader=yaml.Loader)",
    "import yaml\nyaml.unsafe_load('a: 1')",
    "import pickle",
    "from cloudpickle import loads",
    "import pandas as pd\npd.read_pickle('f')",
    "import mlflow\nmlflow.pytorch.load_model('models:/encoder/1')",
])
def test_the_scan_finds_each_unsafe_loader(snippet):
    assert unsafe_calls(snippet)


def test_the_scan_accepts_the_safe_forms():
    assert not unsafe_calls("import torch, numpy as np, yaml\n"
                            "torch.load('x', map_location='cpu', weights_only=True)\n"
                            "np.load('x.npz', allow_pickle=False)\nyaml.safe_load('a: 1')\n")
