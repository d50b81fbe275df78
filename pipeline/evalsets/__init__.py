"""Evaluation sets for `valle-eval` (format: schemas.evalset): from a built corpus's subset
(`from_corpus`: its codes and text as built, ground truth read from the source audio) or from
LibriSpeech test-clean, the papers' set (`librispeech`: downloaded, coded with the corpus's codec)."""
