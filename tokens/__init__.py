"""The token contract shared by the pipeline and the trainer.

What turns audio and text into the tokens a corpus holds and back, so that both halves make them
the same way:
- `tokens.constants`: the codec's numbers and the reserved text ids;
- `tokens.codec_settings`: the codec's settings and numbers, without torch;
- `tokens.codec_weights`: EnCodec weights fetched, checked or made, and their provenance;
- `tokens.codec`: encoding and decoding, and `codec_for` (the codec a corpus names);
- `tokens.audio`: audio as the codec takes it (float32 mono 24 kHz) and wav files;
- `tokens.text`: text normalization and the tokenizer;
- `tokens.stack`: the torch stack, and how EnCodec is imported.
Training the BPE model is the pipeline's (`pipeline.text.bpe`).
"""
