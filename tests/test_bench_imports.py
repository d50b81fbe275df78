"""Every benchmark imports on its own, in a fresh interpreter, so none rots unseen between the
runs that measure with it (an import order that one module's imports hid broke two of them)."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_every_benchmark_imports_alone():
    scripts = sorted(p.stem for p in (REPO / "bench").glob("*.py"))

    def imports(name: str) -> tuple[str, str]:
        done = subprocess.run(
            [sys.executable, "-c", f"import {name}"], cwd=REPO / "bench", capture_output=True, text=True, timeout=300
        )
        return name, done.stderr.strip().splitlines()[-1] if done.returncode else ""

    with ThreadPoolExecutor(4) as pool:
        failed = {name: err for name, err in pool.map(imports, scripts) if err}
    assert len(scripts) >= 12 and failed == {}
