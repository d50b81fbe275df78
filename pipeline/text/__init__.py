"""Text: what the transcripts become before any audio work.

- `bpe`: the SentencePiece BPE model, trained on the training subsets' text (deterministic).
- `agreement`: the book text against the ASR text, so transcripts that were not said are dropped.
Normalization and the tokenizer are the token contract's (tokens.text).
"""
