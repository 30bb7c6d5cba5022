"""Benchmark scripts (benchmarks/*.py) loaded as modules, for tests of what they compute."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py as a module. The script imports its sibling report.py, and its dataclasses look their
    module up in sys.modules while it loads: both only for the load."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        script = importlib.util.module_from_spec(spec)
        patch.setitem(sys.modules, name, script)
        spec.loader.exec_module(script)
    return script
