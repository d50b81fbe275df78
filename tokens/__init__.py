"""The token contract shared by the pipeline and the trainer.

What turns audio and text into the tokens a corpus holds and back, so that both halves make them
the same way:
- `tokens.constants`: the reserved text ids;
- `tokens.codecs`: each codec's numbers (`SPECS`, no torch) and its model (one backend module each);
- `tokens.codec_settings`: the codec's settings and numbers, without torch;
- `tokens.codec_weights`: any codec's weights loaded (EnCodec's fetched, checked or made), and their provenance;
- `tokens.codec`: encoding and decoding, and `codec_for` (the codec a corpus names);
- `tokens.audio`: audio as the codec takes it (float32 mono at its rate) and wav files;
- `tokens.text`: text normalization and the tokenizer;
- `tokens.stack`: the torch stack, and how EnCodec is imported.
Training the BPE model is the pipeline's (`pipeline.text.bpe`).
"""
