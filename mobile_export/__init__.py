"""Turn asrkd checkpoints into mobile artifacts (ONNX, TFLite, Core ML, ExecuTorch) and bundles."""
