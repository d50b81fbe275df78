"""lhotse manifest lines -> compact cuts, for any lhotse recipe's output (the `lhotse` source kind).

Two forms, as lhotse writes them:
- cuts (`<prefix>_cuts_<part>.jsonl.gz`): a MonoCut (or MultiCut) with its recording inside and
  any number of supervisions: `CutLines`, one compact cut per supervision;
- recordings + supervisions (`<prefix>_recordings_<part>`, `<prefix>_supervisions_<part>`):
  the supervisions file is the manifest read line by line (`SupervisionLines`), and each
  supervision's recording is looked up in an on-disk table of the recordings file
  (pipeline.plan.recordings_table): nothing O(corpus) is held in memory.

A compact cut: id (the cut's id when it holds one supervision, else the supervision's), the
recording id, audio (the source's path resolved against the audio root, or its URL), the window
in the recording (seconds), the channel of the audio file to read, speaker, texts ({"text":
supervision.text, plus every string-valued custom field by name}) and language when given.

As in pipeline.plan.manifest, msgspec structs mirror lhotse's dataclasses (required keys
required, unknown keys refused, types checked), so a line lhotse itself would refuse is a
`bad_manifest_line` here. What lhotse reads but this pipeline cannot (transforms such as speed
perturbation, a `command` source, a supervision over several channels, a MixedCut) is refused
with its own reason, one supervision at a time: one bad supervision costs no other.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from typing import Any

import msgspec

from pipeline.encode.segment import PAST_END_TOLERANCE_S
from pipeline.plan.manifest import BadLine, _explain_malformed

LINES_FORMAT = 1  # bump when the compact cuts made from the same lines change
GROUP_BUCKETS = 8  # see unit_group
READABLE_SOURCES = ("file", "url")  # `command` would run a shell line from a manifest: never


class Source(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    channels: list[int]
    source: str
    video: msgspec.Raw = msgspec.Raw()


class Recording(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    sources: list[Source]
    sampling_rate: int
    num_samples: int
    duration: float
    channel_ids: list[int] | None = None
    transforms: list[dict[str, Any]] | None = None


class Supervision(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    recording_id: str
    start: float
    duration: float
    channel: int | list[int] = 0
    text: str | None = None
    language: str | None = None
    speaker: str | int | None = None
    gender: msgspec.Raw = msgspec.Raw()
    custom: dict[str, Any] | None = None
    alignment: msgspec.Raw = msgspec.Raw()


class Cut(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    start: float
    duration: float
    channel: int | list[int]
    supervisions: list[Supervision] = []
    features: msgspec.Raw = msgspec.Raw()
    recording: Recording | None = None
    custom: msgspec.Raw = msgspec.Raw()
    type: str = "MonoCut"


CUT_TYPES = ("MonoCut", "MultiCut", "Cut")  # "Cut": MonoCut's name before lhotse 0.8
_CUT = msgspec.json.Decoder(Cut)
_SUPERVISION = msgspec.json.Decoder(Supervision)
RECORDING = msgspec.json.Decoder(Recording)


def decode(decoder: msgspec.json.Decoder, raw: bytes | str, what: str):
    """A line as `what`, or BadLine saying why lhotse would not read it either."""
    try:
        return decoder.decode(raw)
    except (msgspec.ValidationError, UnicodeDecodeError) as err:  # before DecodeError: its subclass
        raise BadLine(f"not a lhotse {what}: {err}") from None
    except msgspec.DecodeError as err:
        raise BadLine(_explain_malformed(raw, err)) from None


def resolve(source: str, audio_root: str) -> str:
    """A source as the audio store reads it: URLs and absolute paths as they are; a relative path
    joined to the audio root (a folder or a URL), as lhotse joins it to its working directory."""
    if "://" in source or os.path.isabs(source):
        return source
    if "://" in audio_root:
        return audio_root.rstrip("/") + "/" + source
    return os.path.normpath(os.path.join(audio_root, source))


def compact_cut(cut_id: str, rec: Recording, sup: Supervision, start: float, audio_root: str) -> dict:
    """The compact cut of `sup`'s window (`start` seconds into `rec`), or BadLine."""
    for name, value in (("start", start), ("duration", sup.duration)):
        if not math.isfinite(value):
            raise BadLine(f"supervision {sup.id}: {name} is {value}", cut_id=cut_id)
    if sup.duration <= 0:
        raise BadLine(f"supervision {sup.id}: duration is {sup.duration}", cut_id=cut_id)
    channel = sup.channel
    if isinstance(channel, list):
        if len(channel) != 1:
            raise BadLine(
                f"supervision {sup.id} spans channels {channel}: one channel per utterance is encoded",
                "multi_channel_supervision",
                cut_id,
            )
        channel = channel[0]
    if rec.transforms:
        names = ", ".join(str(t.get("name", "?")) for t in rec.transforms)
        raise BadLine(f"recording {rec.id} has transforms ({names}): not applied here", "unsupported_recording", cut_id)
    # A recording may hold one file per channel: read the file that holds this one.
    found = [(s, s.channels.index(channel)) for s in rec.sources if channel in s.channels]
    if not found:
        raise BadLine(f"recording {rec.id} has no source for channel {channel}", "unsupported_recording", cut_id)
    source, file_channel = found[0]
    if source.type not in READABLE_SOURCES:
        raise BadLine(
            f"recording {rec.id}: audio source type {source.type!r} is not read (only {', '.join(READABLE_SOURCES)})",
            "unsupported_recording",
            cut_id,
        )
    end = start + sup.duration
    if start < 0 or end > rec.duration + PAST_END_TOLERANCE_S:
        raise BadLine(
            f"supervision {sup.id} covers {start:.3f}-{end:.3f}s of recording {rec.id}, "
            f"which lasts {rec.duration:.3f}s",
            "supervision_outside_recording",
            cut_id,
        )
    texts = {} if sup.text is None else {"text": sup.text}
    for name, value in (sup.custom or {}).items():
        if isinstance(value, str) and name != "text":  # supervision.text wins over a custom "text"
            texts[name] = value
    cut = {
        "id": cut_id,
        "recording_id": rec.id,
        "audio": resolve(source.source, audio_root),
        "start": round(start, 8),  # as lhotse rounds a cut's times: no 0.30000000000000004
        "duration": sup.duration,
        "channel": file_channel,
        "speaker": "" if sup.speaker is None else str(sup.speaker),
        "texts": texts,
    }
    if sup.language is not None:
        cut["language"] = sup.language
    cut["group"] = unit_group(cut["audio"], rec.id)
    return cut


def unit_group(audio: str, recording_id: str) -> str:
    """What a unit keeps whole: the recording's folder, in GROUP_BUCKETS parts by recording id.

    Per-utterance corpora (LibriTTS, MLS: one file an utterance, 10 M of them) would make the
    planner keep a tally per recording; folders (a speaker's chapter or book) are ~100x fewer.
    The buckets keep a flat folder (LJSpeech's 13 k files) from becoming one unit. A recording
    stays in one group, so a unit still decodes each file once."""
    folder = audio.rsplit("/", 1)[0] if "/" in audio else ""
    return f"{folder}#{zlib.crc32(recording_id.encode()) % GROUP_BUCKETS}"


def _each(make, sup: Supervision) -> dict | BadLine:
    try:
        return make()
    except BadLine as err:
        err.cut_id = err.cut_id or sup.id
        return err


@dataclass(frozen=True)
class CutLines:
    """Lines of a lhotse cuts manifest -> one compact cut per supervision (see the module doc)."""

    audio_root: str

    def __call__(self, raw: bytes | str) -> list[dict | BadLine]:
        try:
            cut = decode(_CUT, raw, "cut")
        except BadLine as err:
            if b'"MixedCut"' in (raw if isinstance(raw, bytes) else raw.encode()):
                return [
                    BadLine(
                        "a MixedCut (several tracks mixed) is not read: mix it into a recording first",
                        "unsupported_cut",
                    )
                ]
            return [err]
        if cut.type not in CUT_TYPES:
            return [BadLine(f"cut {cut.id}: type {cut.type!r} is not one lhotse reads", cut_id=cut.id)]
        if not math.isfinite(cut.start) or cut.start < 0:
            return [BadLine(f"cut {cut.id}: start is {cut.start}", cut_id=cut.id)]
        if cut.recording is None:
            return [BadLine(f"cut {cut.id} has no recording (features only?)", "unsupported_cut", cut.id)]
        if not cut.supervisions:
            return [BadLine(f"cut {cut.id} has no supervision: nothing to train on", "no_supervision", cut.id)]
        one = len(cut.supervisions) == 1
        return [
            _each(
                lambda s=sup: compact_cut(
                    cut.id if one else s.id, cut.recording, s, cut.start + s.start, self.audio_root
                ),
                sup,
            )
            for sup in cut.supervisions
        ]

    @property
    def key(self) -> dict:
        return {"kind": "lhotse", "form": "cuts", "audio_root": self.audio_root, "lines": LINES_FORMAT}


@dataclass(frozen=True)
class SupervisionLines:
    """Lines of a lhotse supervisions manifest -> compact cuts, each joined with its recording
    from the table of the recordings manifest (`table`, opened lazily once per process and
    thread: this parser pickles into the planner's worker processes)."""

    table: str  # path of the recordings table (pipeline.plan.recordings_table)
    recordings_sha256: str
    audio_root: str

    def __call__(self, raw: bytes | str) -> list[dict | BadLine]:
        from pipeline.plan.recordings_table import lookup

        try:
            sup = decode(_SUPERVISION, raw, "SupervisionSegment")
        except BadLine as err:
            return [err]
        try:
            rec = lookup(self.table, sup.recording_id)
        except BadLine as err:
            err.cut_id = sup.id
            return [err]
        return [_each(lambda: compact_cut(sup.id, rec, sup, sup.start, self.audio_root), sup)]

    @property
    def key(self) -> dict:
        return {
            "kind": "lhotse",
            "form": "recordings",
            "recordings_sha256": self.recordings_sha256,
            "audio_root": self.audio_root,
            "lines": LINES_FORMAT,
        }
