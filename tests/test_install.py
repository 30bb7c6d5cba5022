"""The README's install line for CUDA machines resolves from the public index alone (PyPI, no local wheels,
no pip configuration) to a torch and a triton that genrec's `dev` extra accepts."""

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INDEX = "https://pypi.org/simple"


def readme_cuda_torch() -> str:
    match = re.search(r"^pip install (torch==\S+)\s+# CUDA", (ROOT / "README.md").read_text(), re.MULTILINE)
    assert match, "the README has no CUDA install line"
    return match.group(1)


def test_the_readme_cuda_line_resolves_from_pypi_alone(tmp_path):
    try:
        urllib.request.urlopen(f"{INDEX}/pip/", timeout=20)
    except OSError as error:
        pytest.skip(f"the public index is not reachable from here ({error})")
    report = tmp_path / "report.json"
    environment = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_CONSTRAINT": ""}
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                             "--report", str(report), "--index-url", INDEX, readme_cuda_torch(), "-e",
                             f"{ROOT}[dev]"], capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    versions = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    assert versions["torch"] == readme_cuda_torch().split("==")[1]
    assert versions["triton"] == "3.6.0"  # the interpreter the kernel tests are written for
    assert tuple(int(part) for part in versions["numpy"].split(".")[:2]) < (2, 4)
