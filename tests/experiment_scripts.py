"""The repository's experiment scripts (benchmarks/experiments/*.py) as modules, for their tests.

They are not part of the ram_edge package (the wheel leaves them out), so tests load them by file path, as
`python benchmarks/experiments/NAME.py` runs them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXPERIMENTS = Path(__file__).resolve().parents[1] / "benchmarks" / "experiments"


def load(name: str) -> ModuleType:
    """benchmarks/experiments/<name>.py, imported once per session as the module `experiment_<name>`."""
    module_name = f"experiment_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = EXPERIMENTS / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such experiment script; the scripts are in {EXPERIMENTS}")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses look their module up in sys.modules while the class is made.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
