"""The token contract shared by the pipeline and the trainer.

What turns audio and text into the tokens a corpus holds and back, so that both halves make them
the same way: the codec's numbers and the reserved text ids (`tokens.constants`), EnCodec loading,
encoding and decoding (`tokens.codec`), text normalization and the tokenizer (`tokens.text`), and
the torch stack with how EnCodec is imported (`tokens.stack`). Training the BPE model stays in the
pipeline (`pipeline.bpe`).
"""
