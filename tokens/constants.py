"""The reserved text ids every SentencePiece model trained here shares (both halves agree on them).

Plain constants, no imports. The codec's numbers are each codec's own: tokens.codecs.SPECS.
"""

# Reserved ids of every SentencePiece model trained here; text pieces start at 4.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
