"""valle-eval: judge AR + NAR checkpoints as the VALL-E papers do (zero-shot WER, speaker
similarity, DNSMOS) on an evaluation set (schemas.evalset), and the small version of it that
runs during training. Modules: `wer` (text normalization and word errors), `backends` (ASR,
speaker and quality models by name and local path), `run` (tasks, rows, best-of-N), `report`
(markdown, JSON, HTML page), `cli` (the command)."""
