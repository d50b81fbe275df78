"""An evaluation set from LibriSpeech test-clean, the set VALL-E and VALL-E 2 report on.

In: a built corpus (its codec, BPE and text settings), a Selection (default 4-10 s, as the
papers). Out: an evalset folder (schemas.evalset). Steps:
  1. download test-clean.tar.gz from OpenSLR, verified against OpenSLR's published md5
     (storage.download: resumable, kept with its marker; a re-run fetches nothing);
  2. extract it safely (tarfile's "data" filter: no links out, no absolute paths, nothing
     outside the folder), once;
  3. read it with lhotse's LibriSpeech recipe (recordings and supervisions);
  4. text: LibriSpeech transcripts are upper case without punctuation, while the corpus's models
     read cased, punctuated book text, so the models read the transcript in sentence case with a
     final period (a stated choice: it keeps them in the text distribution they were trained on);
     WER is scored against the transcript itself (scoring normalizes case and punctuation);
  5. audio: resampled to 24 kHz and coded by the corpus's codec (its weights' hash checked), in
     batches.
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from pipeline.evalsets.from_corpus import EvalSetError
from pipeline.evalsets.selection import Selection
from schemas.codes import CodesSpace
from schemas.evalset import EvalSetWriter, unusable_text
from schemas.reading import read_index
from storage.download import DownloadError, download
from storage.hashing import Checksum
from storage.remote import join, read_bytes
from tokens.audio import codec_input
from tokens.codec import codec_for
from tokens.text import Tokenizer, normalize_text

log = logging.getLogger(__name__)

PART = "test-clean"
URL = "https://www.openslr.org/resources/12/test-clean.tar.gz"  # 346 MB, 2,620 utterances, 40 speakers
CHECKSUM = "md5:32fa31d27d2e1cad72775fee3f4849a9"  # OpenSLR's md5sum.txt for test-clean.tar.gz
ENCODE_BATCH = 32  # utterances coded at once: bounded memory for any set size


def fetch(download_dir: Path, url: str = URL, checksum: str | None = CHECKSUM, progress: bool = True) -> Path:
    """Download (or find) and extract test-clean; returns the folder holding LibriSpeech/."""
    archive = download_dir / "test-clean.tar.gz"
    try:
        download(url, archive, Checksum.parse(checksum) if checksum else None, progress=progress)
    except DownloadError as err:
        raise EvalSetError(f"LibriSpeech {PART}: {err}") from None
    done = download_dir / "LibriSpeech" / PART / ".extracted"
    if not done.exists():
        with tarfile.open(archive) as tar:
            tar.extractall(download_dir, filter="data")  # refuses links and paths leaving the folder
        if not done.parent.is_dir():
            raise EvalSetError(f"{archive} holds no LibriSpeech/{PART}/ folder; is it the right archive?")
        done.touch()
    return download_dir / "LibriSpeech"


def sentence_case(transcript: str) -> str:
    """'HE HOPED THERE WOULD BE STEW' -> 'He hoped there would be stew.'"""
    text = transcript.strip().lower()
    return (text[:1].upper() + text[1:] + ".") if text else ""


def build_from_librispeech(
    corpus: str,
    dest: Path,
    selection: Selection,
    *,
    download_dir: Path,
    url: str = URL,
    checksum: str | None = CHECKSUM,
    codec_weights: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Write the set; returns {"utterances", "speakers"}."""
    from lhotse.recipes import prepare_librispeech  # lhotse's recipe: imported when used

    index = read_index(corpus, EvalSetError)
    provenance = index["provenance"]
    bpe_uri = join(corpus, provenance["bpe"]["model"])
    bpe_model = read_bytes(bpe_uri)
    bpe = Tokenizer(bpe_uri, bpe_model)
    root = fetch(Path(download_dir), url, checksum, progress)
    parts = prepare_librispeech(root, dataset_parts=[PART])
    recordings, supervisions = parts[PART]["recordings"], parts[PART]["supervisions"]
    chosen = [s for s in supervisions if selection.fits(s.duration)]
    keep = selection.choose([(s.id, s.speaker) for s in chosen])
    chosen = sorted((s for s in chosen if s.id in keep), key=lambda s: s.id)
    codec = codec_for(provenance["codec"], codec_weights, device)
    writer = EvalSetWriter(dest, CodesSpace.of_record(provenance["codec"]))
    skipped: dict[str, int] = {}
    with tqdm(total=len(chosen), desc=f"coding {PART}", unit="utt", disable=not progress) as bar:
        for first in range(0, len(chosen), ENCODE_BATCH):
            batch = chosen[first : first + ENCODE_BATCH]
            waves = [_audio(recordings[s.recording_id], s, codec.spec.sample_rate) for s in batch]
            for s, wave, codes in zip(batch, waves, codec.encode(waves)):
                text = normalize_text(sentence_case(s.text))
                if reason := unusable_text(text, s.text):
                    log.warning("evalset: %s skipped: %s", s.id, reason)
                    skipped[reason] = skipped.get(reason, 0) + 1
                    continue
                writer.add(
                    id=s.id,
                    speaker=s.speaker,
                    text=text,
                    reference=s.text,
                    text_tokens=bpe.encode(text),
                    audio=wave,
                    codes=codes,
                )
            bar.update(len(batch))
    writer.finish(
        name=f"librispeech/{PART}",
        source={
            "kind": "librispeech",
            "part": PART,
            "url": url,
            "checksum": checksum,
            "reference": {"field": "LibriSpeech transcript", "fallbacks": 0},
        },
        selection=selection.record(),
        provenance={k: provenance[k] for k in ("codec", "bpe", "text")},
        bpe_model=bpe_model,
    )
    return {"utterances": len(writer.rows), "speakers": len({r["speaker"] for r in writer.rows}), "skipped": skipped}


def _audio(recording, supervision, target: int):
    """The supervision's span of its recording (LibriSpeech: the whole file), float32 at the
    codec's rate (`target` Hz)."""
    path = recording.sources[0].source
    with sf.SoundFile(path) as f:
        rate = f.samplerate
        f.seek(int(round(supervision.start * rate)))
        samples = f.read(int(round(supervision.duration * rate)), dtype="int16", always_2d=True)[:, 0]
    return codec_input(samples, rate, target)
