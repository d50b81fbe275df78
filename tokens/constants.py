"""The numbers both halves must agree on: EnCodec 24 kHz framing and the reserved text ids.

Plain constants, no imports: the trainer's model code reads them without loading the codec.
"""

SAMPLE_RATE = 24000  # Hz, EnCodec 24 kHz
FRAME_RATE = 75  # code frames per second
HOP = SAMPLE_RATE // FRAME_RATE  # 320 samples per frame
CODEBOOK_SIZE = 1024  # entries per codebook (10 bits)

# Reserved ids of every SentencePiece model trained here; text pieces start at 4.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
