"""The torch stack: how valle-corpus imports it, and one clear line when it is broken.

torch is the only compiled part of the stack we use. EnCodec's model code comes from the
`encodec` package, whose `encodec.utils` imports torchaudio at module level for two helpers we
never call (`convert_audio`, `save_audio`; we resample with libsoxr and write wavs with
soundfile). torchaudio is in maintenance mode: its last release (2.11) trails torch, declares no
upper bound on torch, and refuses to import beside a torch built for another CUDA version. So
encodec is imported with torchaudio held out (`encodec_model_class`): torchaudio may be
installed (encodec declares it) but valle-corpus never imports it, and any torch in
TESTED_TORCH works whatever torchaudio build sits beside it.

This module imports nothing heavy at import time, so the command-line tools can call
`require_torch_stack` before anything touches torch. `python -m tokens.stack` prints the
installed stack and exits non-zero when it does not import (CI runs it after installing).
"""

from __future__ import annotations

import importlib
import sys
import types
from importlib import metadata

# The torch releases verified to import and encode beside encodec (docs/install.md). Keep in
# step with pyproject.toml; constraints.txt pins one of them exactly for CI.
TESTED_TORCH = ">=2.13,<2.16"
STACK = ("torch", "encodec", "torchaudio", "numpy")


def encodec_model_class():
    """`encodec.EncodecModel`, imported without importing torchaudio."""
    return import_without_torchaudio("encodec").EncodecModel


def import_without_torchaudio(name: str) -> types.ModuleType:
    """Import module `name` (encodec, vocos: both import torchaudio at module level for helpers we
    never call) with torchaudio held out, so any torch in TESTED_TORCH works."""
    if name in sys.modules:  # already imported (by us, or by code that wanted torchaudio)
        return sys.modules[name]
    import torch  # noqa: F401  (first, and never under the placeholders)

    placeholders = {} if "torchaudio" in sys.modules else _torchaudio_placeholders()
    sys.modules.update(placeholders)
    try:
        import encodec  # noqa: F401  (vocos imports it too: under the same placeholder)

        return importlib.import_module(name)
    finally:
        for module in placeholders:  # a later `import torchaudio` elsewhere gets the real one
            del sys.modules[module]


# What encodec and vocos import from torchaudio at module level (vocos.heads takes two mel helpers
# by name, used only by a head we never build).
_TORCHAUDIO_MODULES = ("torchaudio", "torchaudio.functional", "torchaudio.functional.functional")


def _torchaudio_placeholders() -> dict[str, types.ModuleType]:
    modules = {
        name: types.ModuleType(name, "stands in for torchaudio while encodec/vocos import")
        for name in _TORCHAUDIO_MODULES
    }

    def unavailable(qualified: str):
        def call(*args, **kwargs):
            raise RuntimeError(
                f"{qualified}: valle-corpus imports encodec and vocos without torchaudio, so their "
                "torchaudio helpers (convert_audio, save_audio, mel heads) are unavailable here"
            )

        return call

    def attribute(name: str):
        def get(attr: str):
            if attr.startswith("__"):  # __file__, __spec__, ...: what inspect and importlib probe
                raise AttributeError(attr)
            return modules.get(f"{name}.{attr}") or unavailable(f"{name}.{attr}")

        return get

    for name, module in modules.items():
        module.__path__ = []  # a package: its submodules import
        module.__getattr__ = attribute(name)  # module-level __getattr__ (PEP 562)
    return modules


def installed() -> str:
    """What is installed, read from package metadata (nothing is imported): 'torch 2.14.1, ...'."""

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return ", ".join(f"{name} {version(name)}" for name in STACK)


def torch_stack_problem() -> str | None:
    """None when torch and encodec import; else one line saying what failed."""
    try:
        import torch  # noqa: F401

        encodec_model_class()
    except Exception as err:  # ImportError, OSError (a missing .so), RuntimeError (CUDA builds)
        lines = str(err).strip().splitlines()
        return f"{type(err).__name__}: {lines[0] if lines else ''}"
    return None


def require_torch_stack(prog: str) -> None:
    """Exit with one line naming what is installed and what to install, if torch is broken."""
    problem = torch_stack_problem()
    if problem is not None:
        print(
            f"{prog}: the torch stack does not import ({problem}). Installed: {installed()}. "
            f"Install a tested torch: pip install 'torch{TESTED_TORCH}' (or, in a checkout, "
            f"pip install -c constraints.txt -e .)",
            file=sys.stderr,
        )
        raise SystemExit(2)


def main() -> int:
    require_torch_stack("tokens.stack")
    import torch

    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    print(f"torch stack OK: torch {torch.__version__} ({cuda}); installed: {installed()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
