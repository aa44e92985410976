"""The Conformer-CTC acoustic model, one component per module.

`conformer` (`ConformerConfig`, `ConformerCTC`, presets) builds the model from `subsampling`
(the strided convolutions and the one output-length formula), `attention` (rotary
self-attention) and `convolution` (the Conformer convolution module).
"""
