"""`valle-torchrun`: torchrun that passes on valle-train's exit codes, with one message.

    valle-torchrun --nproc_per_node 8 -m trainer.train trainer/configs/ar-base.yaml --data /data/libriheavy-large

In: torchrun's arguments, unchanged. Out: torchrun's run, and its exit code: 0, valle-train's own
code when a worker stopped with one (2: the config or a corpus is wrong; 3: the data became
unavailable, `--resume` once it is back) after printing that worker's message once, or torchrun's
own 1 and report for anything else (a crash, a signal).

torchrun itself exits 1 whatever its workers exit with: its `@record` re-raises the agent's
ChildFailedError, which prints torchrun's traceback and a table of failures. valle-train reports
a stop in the error file torchrun gives each worker (TORCHELASTIC_ERROR_FILE, the file that
table reads), so under plain torchrun the message is still in its table; under this launcher the
workers leave the printing to it (LAUNCHED), and one line reaches the user.
"""

from __future__ import annotations

import json
import os
import sys
import time

REPORTED = (2, 3)  # valle-train's exit codes: 2 config or corpus, 3 data unavailable
LAUNCHED = "VALLE_TORCHRUN"  # set for the workers: the launcher prints their stop message
PREFIX = "valle-train: "


def report(message: str, code: int) -> int:
    """A worker's stop: `message` into torchrun's error file (when torchrun started this process)
    and on stderr (unless valle-torchrun prints it; under plain torchrun, once per node)."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        with open(error_file, "w") as f:  # as torchrun's own ErrorHandler writes it, less the traceback
            json.dump({"message": {"message": PREFIX + message, "extraInfo": {"timestamp": str(int(time.time()))}}}, f)
    if not os.environ.get(LAUNCHED) and os.environ.get("LOCAL_RANK", "0") == "0":
        print(PREFIX + message, file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ[LAUNCHED] = "1"
    try:
        run(parse_args(argv))  # torchrun's main, less its @record (which re-raises whatever the workers did)
    except ChildFailedError as err:
        stopped = sorted((f for f in err.failures.values() if _reported(f) is not None), key=lambda f: f.timestamp)
        if not stopped:  # not a stop valle-train reported: torchrun's own report (the table), exit 1
            raise
        print(_reported(stopped[0]), file=sys.stderr, flush=True)
        return stopped[0].exitcode
    return 0


def _reported(failure) -> str | None:
    """The message of a worker that stopped with one of valle-train's exit codes, or None."""
    message = failure.message.get("message") if isinstance(failure.message, dict) else None
    if failure.exitcode in REPORTED and isinstance(message, str) and message.startswith(PREFIX):
        return message
    return None


if __name__ == "__main__":
    sys.exit(main())
