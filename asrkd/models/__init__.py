"""The Conformer-CTC acoustic model, one component per module.

`conformer` (`ConformerConfig`, `ConformerCTC`, presets) builds the model from `subsampling`
(the strided convolutions and the one output-length formula), `attention` (rotary
self-attention) and `convolution` (the Conformer convolution module). `streaming` holds what a
streaming (chunked, causal) model adds: the chunk attention mask, dynamic chunk sizes and the
encoder's state between chunks (`EncoderState`); see docs/STREAMING.md.
"""
