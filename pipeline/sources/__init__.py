"""Source kinds: where a corpus's manifests and audio come from, one module each.

A DAG's `source:` section names its kind (`kind: lhotse`; none means `libriheavy`, the default).
Every kind is a module with the same small interface, and everything after it (plan, units,
resume, lock, rejects, formats, index, inspection) is shared:
- `KIND` (its name here) and `Config`, the dataclass of its `source:` keys (`problems()` beside them);
- `DEFAULT_TEXT_FIELD` and `text_field_problem(field)`: which transcript `text.field` may name;
- `settle(dag, dag_dir)`: resolve locations against the DAG file's folder and fill `subsets` when
  the source can list its parts; then `check(dag)` raises `DagError` for wiring that cannot run;
- `open_source(dag, out, progress, pool)`: the run's `Opened` source: each subset's manifest as a
  `ManifestInput` (a file of JSON lines and the parser of its lines into compact cuts), the audio
  store the units read from, and the provenance recorded in index.json;
- `plan_settings(config)`: what the plan depends on besides the unit size (OUT/corpus.json);
- for evaluation sets made from a finished run (pipeline.evalsets.from_corpus), nothing fetched:
  `run_manifest(dag, subset)` (the subset's `ManifestInput` as the run read it: its cuts' audio)
  and `run_audio_store(dag, subset)` (the store the run read that audio from; FileNotFoundError
  when the run left none), and `REFERENCE`: what WER is scored against, None for the corpus's
  own text, else its name in evalset.json with `reference(cut)` giving it (None: the text).
Adding a kind: one module and a line in `KINDS`. See docs/sources.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from pipeline.plan.manifest import ManifestInput
from pipeline.sources import emilia, lhotse, libriheavy

KINDS = {module.KIND: module for module in (libriheavy, lhotse, emilia)}
DEFAULT_KIND = libriheavy.KIND


class Opened(Protocol):
    """A source opened for a run (downloads may still be under way); closed with `with`."""

    def manifests(self) -> Mapping[str, ManifestInput]:
        """Subset -> its manifest; looking a subset up waits for that subset's files only."""

    def audio_store(self):
        """The store units read audio from (`read_bytes(cut["audio"])`), once it is all there."""

    def provenance(self) -> dict:
        """index.json's `provenance.source`: the kind and the sha256 of every manifest read."""

    def __enter__(self): ...

    def __exit__(self, *exc): ...


def kind_of(config):
    """The module of a `source:` config (its class's KIND)."""
    return KINDS[config.KIND]
