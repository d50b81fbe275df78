"""An evaluation set from a subset of a corpus this DAG built (Libriheavy test_clean, dev, ...).

In: the DAG (where the corpus and its source audio are), a subset name, a Selection. Out: an
evalset folder (schemas.evalset) whose codes and text tokens are the corpus's own (nothing is
encoded again), and whose ground truth is the window each sample was cut from, read from the
same audio the run read (its verified tars, or source.audio_dir) and resampled to 24 kHz as the
codec's input was. Memory holds ids and places, not codes: a first pass over the subset's shards
finds the utterances that fit and chooses among them; a second decodes only the chosen ones.

The models read the corpus's text (the book text, cased and punctuated); WER is scored against
Libriheavy's ASR transcript of the same cut (custom.texts[1], upper case, no punctuation: "Mr."
and "1820" read as "MISTER", "EIGHTEEN TWENTY"), read from the subset's manifest in one streaming
pass that keeps the chosen cuts' transcripts only. It is the aligner's hypothesis, not a
normalization of the book text, and can differ from it word for word (Libriheavy's caveat). A cut
without one is scored against its text; source.reference counts them.
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
from pipeline.fetch.audio_store import DirAudioStore, MissingAudio, TarAudioStore, index_tar
from pipeline.plan.manifest import GZIP_ERRORS, BadLine, parse_line, read_blocks
from schemas.evalset import EvalSetWriter, unusable_text
from schemas.reading import index_shards, read_index, read_shard
from storage.remote import join, read_bytes
from tokens.audio import codec_input
from tokens.text import has_words, select_text

log = logging.getLogger(__name__)
ASR_REFERENCE = "asr transcript (texts[1])"


class EvalSetError(ValueError):
    """The evaluation set cannot be made as asked; the message says why and what to do."""


def audio_store(dag):
    """The audio the DAG's run read: its folder, or its downloaded (verified) tars."""
    src = dag.source
    if src.audio_dir:
        return DirAudioStore(Path(src.audio_dir))
    tars = [downloads(dag) / name for name in src.audio_archives]
    missing = [str(t) for t in tars if not t.is_file()]
    if missing:
        raise EvalSetError(f"the audio archives {missing} are not downloaded; run `valle-prep run` with this DAG first")
    for tar in tars:
        index_tar(tar)
    return TarAudioStore(tars)


def downloads(dag) -> Path:
    """Where the DAG's run put its manifests and archives."""
    src = dag.source
    return Path(src.download_dir).absolute() if src.download_dir else dag.out / "downloads"


def asr_transcripts(manifest: Path, ids: set[str]) -> dict[str, str]:
    """The ASR transcripts (custom.texts[1], normalized as the corpus's text is) of the cuts `ids`,
    in one streaming pass over a manifest; a cut without one, or with no word in it, is absent."""
    found: dict[str, str] = {}
    for cut in _cuts(manifest):
        if cut["id"] in ids and has_words(text := select_text(cut["texts"], "asr")):
            found[cut["id"]] = text
    return found


def _cuts(manifest: Path):
    """A manifest's cuts (compact, pipeline.plan.manifest), streamed."""
    try:
        for _, block in read_blocks(manifest):
            for raw in filter(bytes.strip, block.split(b"\n")):
                try:
                    cut = parse_line(raw, "")
                except BadLine:  # the run refused it too: no utterance of the corpus comes from it
                    continue
                yield cut
    except FileNotFoundError:
        raise EvalSetError(
            f"{manifest} is missing: it holds the transcripts WER is scored against; "
            "run `valle-prep run` with this DAG first"
        ) from None
    except GZIP_ERRORS as err:
        raise EvalSetError(f"{manifest} cannot be read ({err}); run `valle-prep run` with this DAG again") from None


def build_from_corpus(dag, subset: str, dest: Path, selection: Selection, progress: bool = True) -> dict:
    """Write the set; returns {"utterances", "speakers", "skipped": {reason: count}, "warning": str or None}."""
    out = str(dag.out)
    index = read_index(out, EvalSetError)
    if subset not in index["subsets"]:
        raise EvalSetError(f"{out} has no subset {subset!r} (it has {sorted(index['subsets'])})")
    shards = [s for s in index_shards(out, index, error=EvalSetError) if s.subset == subset]
    # Pass 1: who is there (ids, speakers, where), no codes kept; pass 2: the chosen ones only.
    found: list[tuple[str, str, int, int]] = []  # (id, speaker, shard, position)
    for n, shard in enumerate(tqdm(shards, desc=f"reading {subset}", unit="shard", disable=not progress)):
        found += [(m["id"], m["speaker"], n, pos) for pos, m, _ in read_shard(shard) if selection.fits(m["duration"])]
    keep = selection.choose([(cut_id, speaker) for cut_id, speaker, _, _ in found])
    transcripts = asr_transcripts(downloads(dag) / dag.source.manifest_name(subset), keep)
    wanted: dict[int, list[int]] = {}
    for cut_id, _, n, pos in found:
        if cut_id in keep:
            wanted.setdefault(n, []).append(pos)
    store = audio_store(dag)
    writer = EvalSetWriter(dest)
    skipped: dict[str, int] = {}
    fallbacks = 0  # utterances scored against their text: no ASR transcript in the manifest
    with tqdm(total=len(keep), desc="ground truth", unit="utt", disable=not progress) as bar:
        for n, positions in sorted(wanted.items()):
            for _, meta, codes in read_shard(shards[n], np.array(sorted(positions))):
                bar.update()
                reference = transcripts.get(meta["id"], meta["text"])
                if reason := unusable_text(meta["text"], reference):
                    log.warning("evalset: %s skipped: %s", meta["id"], reason)
                    skipped[reason] = skipped.get(reason, 0) + 1
                    continue
                try:
                    audio = window(store, meta)
                except (MissingAudio, ValueError) as err:
                    log.warning("evalset: %s skipped: %s", meta["id"], err)
                    skipped[type(err).__name__] = skipped.get(type(err).__name__, 0) + 1
                    continue
                fallbacks += meta["id"] not in transcripts
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
        log.warning("evalset: %d utterance(s) have no ASR transcript; WER scores them against their text", fallbacks)
    p = index["provenance"]
    reference = {"field": ASR_REFERENCE, "fallbacks": fallbacks}
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


def window(store, meta: dict) -> np.ndarray:
    """The sample's window of its recording, as float32 mono 24 kHz (what the codec encoded)."""
    data = store.read_bytes(meta["recording_id"] + ".flac")  # Libriheavy: recording id = path without .flac
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate = f.samplerate
            f.seek(int(round(meta["start"] * rate)))
            audio = f.read(int(round(meta["duration"] * rate)), dtype="int16", always_2d=True)[:, 0]
    except sf.LibsndfileError as err:
        raise ValueError(f"{meta['recording_id']}.flac cannot be decoded: {err}") from None
    return codec_input(audio, rate)
