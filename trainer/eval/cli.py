"""`valle-eval`: synthesize an evaluation set with AR + NAR checkpoints and score it.

    valle-eval --ar AR.pt --nar NAR.pt --set EVALSET --out DIR [--tasks continuation,cross]
        [--samples 5] [--prompt-seconds 3] [--max-utterances N] [--asr pocketsphinx|hubert:PATH|
        whisper:PATH|nemo:PATH] [--speaker resemblyzer|wavlm:PATH] [--no-dnsmos]
        [--normalizer english-v1|whisper|seed-tts]
        [--codec-weights pretrained|random|PATH] [--decoder encodec|vocos --vocos DIR] [--device D]
        [--seeds K] [--restart]

EVALSET comes from `valle-prep evalset` (a corpus's test subset) or `valle-prep
evalset-librispeech` (LibriSpeech test-clean 4-10 s, the papers' set); its codec, BPE and text
settings must be the checkpoints' (a set of another codec is one error naming both). Writes
DIR/results.md, DIR/results.json, DIR/index.html and the audio the page plays (DIR/audio/). See
trainer/eval/run.py for the tasks, rows and selection rule.
Each finished trial is appended to DIR/rows.jsonl as it is made: the same command again continues
where a crash stopped it (trainer/eval/store.py); another command on the same DIR is refused.

    valle-eval compare A B [--out FILE.md]

says per task, row and metric whether run B differs from run A beyond the noise (paired bootstrap
over the utterances both scored; trainer/eval/compare.py).

Everything read from the set is checked before any model loads (EvalSet.check) and its token ids
against the checkpoints' vocabulary before any synthesis. Exit 0: results written; 1: every
utterance of every task was skipped or failed (nothing scored; the reasons are printed); 2: bad
input (set, checkpoints, back-ends, options, an --out holding another run's rows), one line saying
which file and what to do.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from schemas.contract import SchemaError
from schemas.evalset import UTTERANCES, EvalSet
from storage.hashing import sha256_file
from trainer.corpus import provenance_key
from trainer.eval import compare, report
from trainer.eval.backends import DNSMOS, BackendError, asr_backend, speaker_backend
from trainer.eval.run import TASKS, EvalConfig, Scorer, evaluate
from trainer.eval.store import ROWS_FILE, RowStore
from trainer.eval.wer import NORMALIZATION, NORMALIZERS, normalizer_named
from trainer.sampling import LengthGuard, SamplingConfig
from trainer.synth import SynthError, Synthesizer, add_guard_options


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        return compare.main(argv[1:])
    parser = argparse.ArgumentParser(prog="valle-eval", description=__doc__.split("\n")[0])
    parser.add_argument("--ar", required=True, help="AR checkpoint (valle-train)")
    parser.add_argument("--nar", required=True, help="NAR checkpoint (valle-train)")
    parser.add_argument("--set", dest="evalset", required=True, help="evaluation set folder (valle-prep evalset)")
    parser.add_argument("--out", required=True, help="where results and the page go")
    parser.add_argument("--tasks", default=",".join(TASKS), help="continuation,cross (default: both)")
    parser.add_argument("--samples", type=int, default=5, help="N of best-of-N (default 5, as the papers)")
    parser.add_argument("--prompt-seconds", type=float, default=3.0, help="continuation prompt (default 3 s)")
    parser.add_argument("--max-utterances", type=int, help="only N utterances of the set, spread over its speakers")
    parser.add_argument("--asr", default="pocketsphinx", help="pocketsphinx | hubert:PATH | whisper:PATH | nemo:PATH")
    parser.add_argument("--speaker", default="resemblyzer", help="resemblyzer | wavlm:PATH")
    parser.add_argument("--no-dnsmos", action="store_true", help="skip DNSMOS")
    parser.add_argument(
        "--normalizer",
        default=NORMALIZATION,
        help=f"WER text normalization: {' | '.join(NORMALIZERS)} (default {NORMALIZATION}; docs/evaluation.md)",
    )
    parser.add_argument("--codec-weights", default="pretrained", help="pretrained | random | PATH")
    parser.add_argument("--decoder", default="encodec", help="encodec | vocos")
    parser.add_argument("--vocos", help="folder with a Vocos EnCodec checkpoint (config.yaml, pytorch_model.bin)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds", type=int, default=1, help="K sampling runs (default 1): run r's sample k is seeded seed + r*N + k"
    )
    parser.add_argument("--restart", action="store_true", help="drop the rows OUT/rows.jsonl holds and start over")
    parser.add_argument("--top-p", type=float, default=0.8)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=1.0)
    add_guard_options(parser)
    parser.add_argument("--page-utterances", type=int, default=24, help="utterances a task with audio on the page")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        results = run(args)
    except (SynthError, SchemaError, BackendError, ValueError) as err:
        print(f"valle-eval: {err}", file=sys.stderr)
        return 2
    if not any(task["utterances"] for task in results["tasks"].values()):
        reasons = {r: n for task in results["tasks"].values() for r, n in (task["skipped"] | task["failed"]).items()}
        print(f"valle-eval: every utterance was skipped or failed, nothing was scored ({reasons})", file=sys.stderr)
        return 1
    out = Path(args.out)
    paths = report.write(results, out)
    print(paths["markdown"].read_text(), end="")
    print(f"wrote {paths['markdown']}, {paths['json']} and {paths['html']}")
    return 0


def run(args) -> dict:
    normalizer_named(args.normalizer)("")  # an unknown name is a bad option: said before anything loads
    evalset = EvalSet(args.evalset)
    evalset.check()
    cfg = EvalConfig(
        tasks=tuple(t for t in args.tasks.split(",") if t),
        samples=args.samples,
        prompt_seconds=args.prompt_seconds,
        max_utterances=args.max_utterances,
        seed=args.seed,
        seeds=args.seeds,
        page_utterances=args.page_utterances,
        sampling=SamplingConfig(
            top_p=args.top_p, window=args.window, repetition_threshold=args.threshold, temperature=args.temperature
        ),
        guard=LengthGuard(args.min_seconds_per_token, args.max_seconds_per_token),
    )
    synth = Synthesizer.load(
        args.ar,
        args.nar,
        bpe=str(evalset.bpe_model),
        codec_weights=args.codec_weights,
        device=args.device,
        decoder=args.decoder,
        vocos=args.vocos,
        given=(args.evalset, provenance_key({"provenance": evalset.provenance})),
    )
    check_vocabulary(evalset, synth)
    device = "cuda" if synth.device.type == "cuda" else "cpu"
    scorer = Scorer(
        asr_backend(args.asr, device),
        speaker_backend(args.speaker, device),
        None if args.no_dnsmos else DNSMOS(),
        args.normalizer,
        synth.sample_rate,
    )
    checkpoints = {
        "ar": args.ar,
        "nar": args.nar,
        "ar_sha256": sha256_file(args.ar),
        "nar_sha256": sha256_file(args.nar),
        "decoder": args.decoder if args.decoder == "encodec" else f"vocos {args.vocos}",
    }
    identity = {  # what makes the rows: the same command on the same inputs continues, others are refused
        "set": {
            "folder": str(evalset.folder.resolve()),
            "name": evalset.name,
            "utterances_sha256": sha256_file(evalset.folder / UTTERANCES),
        },
        "checkpoints": {k: checkpoints[k] for k in ("ar_sha256", "nar_sha256", "decoder")}
        | {"codec_weights": args.codec_weights},
        "settings": asdict(cfg),
        "backends": scorer.describe(),
        "device": device,
    }
    store = RowStore(Path(args.out) / ROWS_FILE, identity, restart=args.restart)
    results = evaluate(synth, evalset, scorer, cfg, Path(args.out) / "audio", not args.no_progress, store)
    results["set"] |= {"name": evalset.name, "folder": str(evalset.folder), "source": evalset.meta["source"]}
    results["set"]["reference"] = evalset.reference  # what WER is scored against
    results["checkpoints"] = checkpoints
    results["backends"] = scorer.describe()
    results["device"] = str(synth.device) + (
        f" ({torch.cuda.get_device_name(synth.device)})" if device == "cuda" else ""
    )
    return results


def check_vocabulary(evalset: EvalSet, synth: Synthesizer) -> None:
    """Every utterance's text tokens are ids the checkpoints' text embeddings have."""
    vocab = min(synth.ar.cfg.text_vocab, synth.nar.cfg.text_vocab)
    for u in evalset.utterances:
        if u.text_tokens and max(u.text_tokens) >= vocab:
            raise SynthError(
                f"{evalset.folder}: {u.id}'s text token {max(u.text_tokens)} is outside the checkpoints' "
                f"vocabulary of {vocab}; the set was tokenized with another BPE model than theirs"
            )
