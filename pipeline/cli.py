"""`valle-prep`: run a DAG, show a corpus's status, verify it, report on it, listen to it.

valle-prep run DAG [--out DIR] [--set dotted.key=value ...] [--ray-address ADDR] [--rebuild-audio]
                   [--prune] [--force-unlock] [--allow-stack-change]
valle-prep status OUT [--json]
valle-prep verify OUT [--jobs N]
valle-prep report OUT [--code-shards N] [--to DIR]
valle-prep listen OUT CUT_ID --out x.wav
valle-prep evalset DAG --subset NAME --to DIR [--out OUT] [--min-seconds 4 --max-seconds 10]
                   [--per-speaker N] [--max-utterances N]
valle-prep evalset-librispeech OUT --to DIR [--download-dir DIR] [--codec-weights W] [--device D]

Exit codes of `run`: 0 done; 1 stopped on an error it names (units failed, settings changed,
downloads, the output folder in use, ...); 2 a bad DAG or setting; 4 another run took over the
output folder (or a file this run was downloading) while this one ran: it had been paused or cut
off past the lock's stale time. This run stopped before committing anything more; the other goes
on: let it finish rather than start this one again alongside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="valle-prep", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a DAG file; re-run the same command to resume")
    p.add_argument("dag", help="a DAG file, e.g. dags/sample.yaml")
    p.add_argument("--out", help="output folder (overrides output.dir)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any DAG key; the value is parsed as YAML (repeatable)",
    )
    p.add_argument("--ray-address", help="join an existing Ray cluster instead of starting one")
    p.add_argument(
        "--rebuild-audio", action="store_true", help="re-encode every unit when the audio/codec settings changed"
    )
    p.add_argument(
        "--prune", action="store_true", help="delete committed units that are no longer in the plan (kept by default)"
    )
    p.add_argument(
        "--force-unlock",
        action="store_true",
        help="take the output folder over from a run on another host whose heartbeat is still fresh "
        "(only when you know that run is gone)",
    )
    p.add_argument(
        "--allow-stack-change",
        action="store_true",
        help="let codes made on another compute stack (device, GPU model or CPU instruction set, torch, cuDNN) "
        "join this corpus's",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("status", help="units done per stage, hours, rejects")
    p.add_argument("out")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("verify", help="check every shard against the index and the schemas")
    p.add_argument("out", help="the corpus: a folder, or an http(s):// or s3:// location")
    p.add_argument(
        "--jobs", type=int, metavar="N", help="processes checking shards at once (default: the CPUs, up to 8)"
    )

    p = sub.add_parser("report", help="write OUT/report/index.html (plots, codebooks, speakers, rejects)")
    p.add_argument("out", help="the corpus: a folder, or an http(s):// or s3:// location")
    p.add_argument(
        "--to", metavar="DIR", help="where to write the report (default: OUT/report, or ./report for a remote corpus)"
    )
    p.add_argument(
        "--code-shards",
        type=int,
        metavar="N",
        help="read codes from N shards spread over the corpus (default: every shard)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("listen", help="decode one sample's codes to a wav at the codec's sample rate")
    p.add_argument("out", help="the corpus: a folder, or an http(s):// or s3:// location")
    p.add_argument("cut_id", help="the sample's id (its cut or supervision id in the source's manifest)")
    p.add_argument("--out", dest="wav", required=True, help="the wav file to write")
    p.add_argument(
        "--codec-weights",
        help="pretrained | random | PATH (default: what the corpus was encoded with; the weights' hash must match)",
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")

    p = sub.add_parser("evalset", help="an evaluation set for valle-eval from a subset of the corpus a DAG built")
    p.add_argument("dag", help="the DAG file the corpus was built with (its audio gives the ground truth)")
    p.add_argument("--subset", required=True, help="a manifest subset of the corpus, e.g. test_clean or dev")
    p.add_argument("--to", required=True, metavar="DIR", help="the evaluation set's folder")
    p.add_argument("--out", help="the corpus folder, when not the DAG's output.dir")
    _selection_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "evalset-librispeech", help="an evaluation set from LibriSpeech test-clean, coded with a corpus's codec"
    )
    p.add_argument("out", help="the corpus whose codec, BPE and text settings to use (folder or URL)")
    p.add_argument("--to", required=True, metavar="DIR", help="the evaluation set's folder")
    p.add_argument("--download-dir", metavar="DIR", help="where test-clean.tar.gz goes (default: DIR/downloads)")
    p.add_argument(
        "--url", help="where to fetch test-clean.tar.gz (default: OpenSLR; a mirror must serve the same file)"
    )
    p.add_argument("--codec-weights", help="pretrained | random | PATH (default: what the corpus was encoded with)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    _selection_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    commands = {"run": _run, "status": _status, "verify": _verify, "report": _report, "listen": _listen}
    commands |= {"evalset": _evalset, "evalset-librispeech": _evalset_librispeech}
    return commands[args.command](args)


def _selection_args(p) -> None:
    p.add_argument("--min-seconds", type=float, default=4.0, help="shortest utterance kept (default 4, as the papers)")
    p.add_argument("--max-seconds", type=float, default=10.0, help="longest utterance kept (default 10)")
    p.add_argument("--per-speaker", type=int, metavar="N", help="at most N utterances a speaker")
    p.add_argument("--max-utterances", type=int, metavar="N", help="at most N in all (round-robin over speakers)")


def _run(args) -> int:
    from tokens.stack import require_torch_stack

    require_torch_stack("valle-prep")
    from pipeline.dag import DagError, load_dag
    from pipeline.encode.unit import StackChanged
    from pipeline.executors.placement import ClusterMismatch
    from pipeline.output.lock import LockLost, OutputLocked
    from pipeline.runner import RunFailed, SettingsChanged, WeightsRefused, run
    from storage.download import DownloadError
    from tokens.codec_weights import WeightsUnavailable

    try:
        dag = load_dag(args.dag, args.overrides, out=args.out, ray_address=args.ray_address)
        summary = run(
            dag,
            rebuild_audio=args.rebuild_audio,
            prune=args.prune,
            progress=not args.no_progress,
            force_unlock=args.force_unlock,
            allow_stack_change=args.allow_stack_change,
        )
    except DagError as err:
        print(f"valle-prep: {err}", file=sys.stderr)
        return 2
    except LockLost as err:
        print(f"valle-prep: {err}", file=sys.stderr)
        return 4
    except (
        SettingsChanged,
        StackChanged,
        RunFailed,
        DownloadError,
        WeightsUnavailable,
        WeightsRefused,
        OutputLocked,
        ClusterMismatch,
    ) as err:
        print(f"valle-prep: {err}", file=sys.stderr)
        return 1
    index = summary.index
    samples = sum(s["samples"] for s in index["subsets"].values())
    hours = sum(s["hours"] for s in index["subsets"].values())
    print(
        f"{dag.out}/index.json: {samples} samples, {hours:.3f} h, {len(index['shards'])} shards, "
        f"{index['rejects']['total']} rejects | units: {summary.units} "
        f"({summary.encoded} encoded, {summary.reshard} re-sharded, {summary.skipped} already done), "
        f"codec forward passes: {summary.codec_forward_passes}"
    )
    if summary.orphans:
        print(
            f"{len(summary.orphans)} unit(s) no longer in the plan were "
            f"{'deleted (--prune)' if summary.pruned else 'kept, outside index.json (--prune deletes them)'}: "
            f"{', '.join(summary.orphans)}",
            file=sys.stderr,
        )
    if summary.codec_stats.get("oom_splits"):
        print(
            f"codec: {summary.codec_stats['oom_splits']:.0f} batch(es) split after running out of device memory "
            "(a smaller batch may round a near-tie to another code, see tokens/codec.py); a smaller "
            "codec.batch_seconds avoids the retries",
            file=sys.stderr,
        )
    if index["provenance"]["codec"]["weights"] == "random":
        print(
            f"WARNING: codes were made with RANDOM {index['provenance']['codec']['model']} weights (offline test run); "
            "they are not usable for training a real model.",
            file=sys.stderr,
        )
    return 0


def _status(args) -> int:
    from pipeline.inspect.status import corpus_status, format_status

    try:
        status = corpus_status(Path(args.out))
    except FileNotFoundError as err:
        print(f"valle-prep: {err}", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=1) if args.json else format_status(status))
    return 0


def _verify(args) -> int:
    from pipeline.inspect.verify import default_jobs, verify

    if args.jobs is not None and args.jobs < 1:
        print("valle-prep: --jobs must be >= 1", file=sys.stderr)
        return 2
    problems = verify(args.out, progress=sys.stderr.isatty(), jobs=args.jobs or default_jobs())
    for p in problems:
        print(p)
    print(f"{args.out}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def _report(args) -> int:
    from pipeline.inspect.report import ReportError, report_dir, summary_text, write_report
    from schemas import SchemaError

    if args.code_shards is not None and args.code_shards < 1:
        print("valle-prep: --code-shards must be >= 1", file=sys.stderr)
        return 2
    folder = Path(args.to) if args.to else report_dir(args.out)
    try:
        stats = write_report(args.out, folder, code_shards=args.code_shards, progress=not args.no_progress)
    except (ReportError, SchemaError) as err:
        print(f"valle-prep: {err}", file=sys.stderr)
        return 2
    print(summary_text(stats))
    print(f"wrote {folder / 'index.html'}")
    return 0


def _listen(args) -> int:
    from tokens.stack import require_torch_stack

    require_torch_stack("valle-prep")
    from pipeline.inspect.listen import ListenError, listen

    try:
        seconds = listen(args.out, args.cut_id, Path(args.wav), weights=args.codec_weights, device=args.device)
    except ListenError as err:
        print(f"valle-prep: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.wav}: {args.cut_id}, {seconds:.2f} s")
    return 0


def _selection(args):
    from pipeline.evalsets.selection import Selection

    return Selection(args.min_seconds, args.max_seconds, args.per_speaker, args.max_utterances)


def _evalset(args) -> int:
    from pipeline.dag import DagError, load_dag
    from pipeline.evalsets.from_corpus import EvalSetError, build_from_corpus
    from schemas.contract import SchemaError

    try:
        dag = load_dag(args.dag, out=args.out)
        summary = build_from_corpus(dag, args.subset, Path(args.to), _selection(args), progress=not args.no_progress)
    except (DagError, EvalSetError, SchemaError, ValueError) as err:
        print(f"valle-prep: {err}", file=sys.stderr)
        return 2
    _print_evalset_summary(args.to, summary)
    if summary["warning"]:
        print(_banner(summary["warning"]), file=sys.stderr)
    return 0


def _banner(text: str) -> str:
    """A warning that stands out of the progress bars and log lines around it."""
    rule = "!" * 78
    return f"{rule}\n!! WARNING: {text}\n{rule}"


def _print_evalset_summary(to, summary: dict) -> None:
    skipped = ", ".join(f"{n} {why}" for why, n in summary["skipped"].items())
    print(
        f"wrote {to}: {summary['utterances']} utterances of {summary['speakers']} speakers"
        + (f" (skipped: {skipped})" if skipped else "")
    )


def _evalset_librispeech(args) -> int:
    from tokens.stack import require_torch_stack

    require_torch_stack("valle-prep")
    from pipeline.evalsets import librispeech
    from pipeline.evalsets.from_corpus import EvalSetError
    from schemas.contract import SchemaError
    from tokens.codec_weights import WeightsUnavailable

    to = Path(args.to)
    try:
        summary = librispeech.build_from_librispeech(
            args.out,
            to,
            _selection(args),
            download_dir=Path(args.download_dir) if args.download_dir else to / "downloads",
            url=args.url or librispeech.URL,
            codec_weights=args.codec_weights,
            device=args.device,
            progress=not args.no_progress,
        )
    except (EvalSetError, SchemaError, WeightsUnavailable, ValueError) as err:
        print(f"valle-prep: {err}", file=sys.stderr)
        return 2
    _print_evalset_summary(to, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
