"""Measure checkpoints and artifacts: WER/CER, real-time factor, runtime runners, reports."""
