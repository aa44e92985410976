"""asrkd: distil a large ASR teacher into a compact Conformer-CTC student and ship it to phones."""

__version__ = "0.1.0"
