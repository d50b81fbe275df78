"""The token contract shared by the pipeline and the trainer.

What turns audio and text into the tokens a corpus holds, so that both halves make them the same
way: the torch stack and how EnCodec is imported (`tokens.stack`).
"""
