"""The layers of docs/design.md hold: a module imports only its own layer and those below it.

storage -> tokens -> schemas -> {pipeline, trainer}: pipeline and trainer never import each
other; the inspect tools (pipeline.inspect) read corpora through the shared layers and the
run's ledger, not through other stages; benchmarks and sample/ import no test module. Every
import counts, including those inside functions and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["storage", "tokens", "schemas", "pipeline", "trainer"]
ALLOWED = {  # layer -> the project's packages it may import
    "storage": {"storage"},
    "tokens": {"storage", "tokens"},
    "schemas": {"storage", "tokens", "schemas"},
    "pipeline": {"storage", "tokens", "schemas", "pipeline"},
    "trainer": {"storage", "tokens", "schemas", "trainer"},
}
PROJECT = {*LAYERS, "sample", "tests", "bench"}


def imports(source: str, package: tuple[str, ...]) -> list[str]:
    """Every name a module of `package` imports, absolute (`from a import b` gives "a.b")."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names += [f"{module}.{a.name}" for a in node.names]
    return names


def imported_by(path: Path) -> list[str]:
    return imports(path.read_text(), path.relative_to(REPO).parts[:-1])


def project_files(*roots: str) -> list[Path]:
    return sorted(p for root in roots for p in (REPO / root).rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_no_module_imports_a_layer_above_its_own(layer):
    wrong = {
        (str(path.relative_to(REPO)), name)
        for path in project_files(layer)
        for name in imported_by(path)
        if name.split(".")[0] in PROJECT and name.split(".")[0] not in ALLOWED[layer]
    }
    assert not wrong, f"{layer} imports outside {sorted(ALLOWED[layer])}: {sorted(wrong)}"


def test_the_inspect_tools_read_through_the_shared_layers():
    wrong = {
        (str(path.relative_to(REPO)), name)
        for path in project_files("pipeline/inspect")
        for name in imported_by(path)
        if name.startswith("pipeline.") and not name.startswith(("pipeline.inspect", "pipeline.output.ledger"))
    }
    assert not wrong, sorted(wrong)


def test_benchmarks_and_sample_data_import_no_test_module():
    wrong = {
        (str(path.relative_to(REPO)), name)
        for path in project_files("bench", "sample")
        for name in imported_by(path)
        if name.split(".")[0] == "tests"
    }
    assert not wrong, sorted(wrong)


def test_imports_are_found_wherever_they_are():
    """Inside a function, under TYPE_CHECKING, relative: each counts."""
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from trainer import corpus\n"
        "def f():\n    from ..models import ar\n    import pipeline.runner\n"
    )
    assert {"trainer.corpus", "trainer.models.ar", "pipeline.runner"} <= set(imports(source, ("trainer", "synth")))
