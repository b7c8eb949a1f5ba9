"""The text side of the label queries, used by training and export alike: CLIP and MiniLM text encoders,
open-set vocabularies, and the query space a checkpoint records (encoder, scale, centring)."""
