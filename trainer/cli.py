"""Console entry points `valle-train`, `valle-torchrun`, `valle-synth` and `valle-eval`.

They check the torch stack before importing anything that needs it, so a broken install reads as
one line naming what is installed and what to install, not a traceback from inside a library.
"""

from __future__ import annotations

from tokens.stack import require_torch_stack


def train(argv: list[str] | None = None) -> int:
    require_torch_stack("valle-train")
    from trainer.train import main

    return main(argv)


def torchrun(argv: list[str] | None = None) -> int:
    require_torch_stack("valle-torchrun")
    from trainer.launch import main

    return main(argv)


def synth(argv: list[str] | None = None) -> int:
    require_torch_stack("valle-synth")
    from trainer.synth import main

    return main(argv)


def evaluate(argv: list[str] | None = None) -> int:
    require_torch_stack("valle-eval")
    import importlib.util
    import sys

    missing = [
        m
        for m in ("jiwer", "pocketsphinx", "resemblyzer", "speechmos", "onnxruntime")
        if not importlib.util.find_spec(m)
    ]
    if missing:
        print(f"valle-eval: {', '.join(missing)} not installed: pip install 'valle-corpus[eval]'", file=sys.stderr)
        return 2
    from trainer.eval.cli import main

    return main(argv)
