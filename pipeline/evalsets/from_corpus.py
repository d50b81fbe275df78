"""An evaluation set from a subset of a corpus this DAG built (Libriheavy test_clean, a lhotse
recipe's test part, an Emilia subset, ...), for every source kind.

In: the DAG (where the corpus and its source audio are), a subset name, a Selection. Out: an
evalset folder (schemas.evalset) whose codes and text tokens are the corpus's own (nothing is
encoded again), and whose ground truth is the window each sample was cut from, read from the
same audio the run read (the file and channel the subset's manifest names, through the source
kind's audio store: verified tars, a folder, paths or URLs) and resampled to 24 kHz as the
codec's input was. Memory holds ids and places, not codes: a first pass over the subset's shards
finds the utterances that fit and chooses among them; one streaming pass over the subset's
manifest keeps the chosen cuts only; a last pass decodes the chosen ones.

What a source kind gives (pipeline.sources): `run_manifest(dag, subset)` and
`run_audio_store(dag, subset)`, what its finished run read, nothing downloaded; and `REFERENCE`,
what WER is scored against. None: the corpus's text (lhotse, Emilia: one transcript per
utterance). Libriheavy's is its ASR transcript (`reference(cut)`: custom.texts[1], upper case,
no punctuation: "Mr." and "1820" read as "MISTER", "EIGHTEEN TWENTY") while the models read the
book text: the aligner's hypothesis, not a normalization of the book text, and it can differ
from it word for word (Libriheavy's caveat). A cut without one is scored against its text;
source.reference counts them.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from pipeline.evalsets.held_out import held_out_fields
from pipeline.evalsets.selection import Selection
from pipeline.fetch.audio_store import MissingAudio
from pipeline.plan.manifest import GZIP_ERRORS, BadLine, ManifestInput, libriheavy_input, read_blocks
from pipeline.sources import kind_of, libriheavy
from schemas.codes import CodesSpace
from schemas.evalset import EvalSetWriter, unusable_text
from schemas.reading import index_shards, read_index, read_shard
from storage.remote import join, read_bytes
from tokens.audio import codec_input

log = logging.getLogger(__name__)


class EvalSetError(ValueError):
    """The evaluation set cannot be made as asked; the message says why and what to do."""


RUN_FIRST = "run `valle-prep run` with this DAG first"
TEXT_REFERENCE = "text"  # source.reference.field of a set scored against its own text
EXACT_SEEK = {"FLAC", "WAV", "WAVEX", "RF64", "W64", "AIFF", "CAF"}  # libsndfile seeks these to the sample


def asr_transcripts(manifest: Path, ids: set[str]) -> dict[str, str]:
    """Libriheavy's ASR transcripts (libriheavy.reference) of the cuts `ids` in a manifest; a cut
    without one, or with no word in it, is absent."""
    cuts = chosen_cuts(libriheavy_input(manifest, ""), ids)
    return {cut_id: text for cut_id, cut in cuts.items() if (text := libriheavy.reference(cut))}


def chosen_cuts(manifest: ManifestInput, ids: set[str]) -> dict[str, dict]:
    """The compact cuts `ids` of a manifest, in one streaming pass that keeps only them (a line
    the run refused gives no utterance of the corpus, and is passed over here too)."""
    found: dict[str, dict] = {}
    try:
        for _, block in read_blocks(manifest.path):
            for raw in filter(bytes.strip, block.split(b"\n")):
                for cut in manifest.lines(raw):
                    if not isinstance(cut, BadLine) and cut["id"] in ids:
                        found.setdefault(cut["id"], cut)  # the first of an id, as the run kept it
    except FileNotFoundError:
        raise EvalSetError(
            f"{manifest.path} is missing: it names the audio (and, for Libriheavy, the transcripts WER is "
            f"scored against) of the subset's cuts; {RUN_FIRST}"
        ) from None
    except GZIP_ERRORS as err:
        raise EvalSetError(
            f"{manifest.path} cannot be read ({err}); run `valle-prep run` with this DAG again"
        ) from None
    return found


def build_from_corpus(dag, subset: str, dest: Path, selection: Selection, progress: bool = True) -> dict:
    """Write the set; returns {"utterances", "speakers", "skipped": {reason: count}, "warning": str or None}."""
    out = str(dag.out)
    index = read_index(out, EvalSetError)
    if subset not in index["subsets"]:
        raise EvalSetError(f"{out} has no subset {subset!r} (it has {sorted(index['subsets'])})")
    if subset not in dag.subsets.roles():
        raise EvalSetError(f"the DAG lists no subset {subset!r}: give the DAG {out} was built with")
    shards = [s for s in index_shards(out, index, error=EvalSetError) if s.subset == subset]
    # Pass 1: who is there (ids, speakers, where), no codes kept; pass 2: the chosen ones only.
    found: list[tuple[str, str, int, int]] = []  # (id, speaker, shard, position)
    for n, shard in enumerate(tqdm(shards, desc=f"reading {subset}", unit="shard", disable=not progress)):
        found += [
            (m["id"], m["speaker"], n, pos)
            for pos, m, _ in read_shard(shard, all_metadata=True)
            if selection.fits(m["duration"])
        ]
    keep = selection.choose([(cut_id, speaker) for cut_id, speaker, _, _ in found])
    kind = kind_of(dag.source)
    try:
        cuts = chosen_cuts(kind.run_manifest(dag, subset), keep)
        store = kind.run_audio_store(dag, subset)
    except FileNotFoundError as err:
        raise EvalSetError(f"{err}; {RUN_FIRST}") from None
    wanted: dict[int, list[int]] = {}
    for cut_id, _, n, pos in found:
        if cut_id in keep:
            wanted.setdefault(n, []).append(pos)
    writer = EvalSetWriter(dest, CodesSpace.of_index(index))
    skipped: dict[str, int] = {}

    def skip(cut_id: str, reason: str, detail=None) -> None:
        log.warning("evalset: %s skipped: %s", cut_id, detail or reason)
        skipped[reason] = skipped.get(reason, 0) + 1

    fallbacks = 0  # utterances scored against their text: the kind's reference is missing
    with tqdm(total=len(keep), desc="ground truth", unit="utt", disable=not progress) as bar:
        for n, positions in sorted(wanted.items()):
            for _, meta, codes in read_shard(shards[n], np.array(sorted(positions)), all_metadata=True):
                bar.update()
                cut = cuts.get(meta["id"])
                if cut is None:  # the manifest changed since the run: where its audio is is unknown
                    skip(meta["id"], "not in the manifest")
                    continue
                own = kind.reference(cut) if kind.REFERENCE else None
                reference = own or meta["text"]
                if reason := unusable_text(meta["text"], reference):
                    skip(meta["id"], reason)
                    continue
                try:
                    audio = window(store, cut, meta, writer.space.sample_rate)
                except (MissingAudio, ValueError) as err:
                    skip(meta["id"], type(err).__name__, err)
                    continue
                fallbacks += bool(kind.REFERENCE) and own is None
                writer.add(
                    id=meta["id"],
                    speaker=meta["speaker"],
                    text=meta["text"],
                    reference=reference,
                    text_tokens=meta["text_tokens"],
                    audio=audio,
                    codes=codes,
                )
    held_out = held_out_fields(out, index, subset, {r["speaker"] for r in writer.rows})
    if "warning" in held_out:
        log.warning("evalset: %s", held_out["warning"])
    if fallbacks:
        log.warning("evalset: %d utterance(s) lack the %s; WER scores them on their text", fallbacks, kind.REFERENCE)
    p = index["provenance"]
    reference = {"field": kind.REFERENCE or TEXT_REFERENCE, "fallbacks": fallbacks}
    writer.finish(
        name=f"{dag.name}/{subset}",
        source={"kind": "corpus", "corpus": out, "subset": subset, "reference": reference, **held_out},
        selection=selection.record(),
        provenance={k: p[k] for k in ("codec", "bpe", "text")},
        bpe_model=read_bytes(join(out, p["bpe"]["model"])),
    )
    kept = len(writer.rows)
    summary = {"utterances": kept, "speakers": len({r["speaker"] for r in writer.rows}), "skipped": skipped}
    return summary | {"warning": held_out.get("warning")}


def window(store, cut: dict, meta: dict, target: int) -> np.ndarray:
    """The sample's window (`meta`'s start and duration, as the shard holds them) of the file
    and channel its manifest `cut` names, as float32 mono at the codec's rate (`target` Hz): what
    the codec encoded, decoded
    as pipeline.encode.segment decodes it (16-bit files as int16)."""
    data = store.read_bytes(cut["audio"])
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, dtype = f.samplerate, "int16" if f.subtype == "PCM_16" else "float32"
            first, frames = int(round(meta["start"] * rate)), int(round(meta["duration"] * rate))
            if f.format in EXACT_SEEK:
                f.seek(first)
                audio = f.read(frames, dtype=dtype, always_2d=True)
            else:  # decoded from the start, as the run decoded it: an mp3's seek is off by samples
                audio = f.read(first + frames, dtype=dtype, always_2d=True)[first:]
    except (sf.LibsndfileError, RuntimeError) as err:
        raise ValueError(f"{cut['audio']} cannot be decoded: {err}") from None
    if cut["channel"] >= audio.shape[1]:
        raise ValueError(f"{cut['audio']} has no channel {cut['channel']}")
    return codec_input(audio[:, cut["channel"]], rate, target)
