"""What a CTranslate2 model folder holds, read from its ``model.bin`` without CTranslate2.

CTranslate2's Python API runs a model but does not expose its variables, so the number of
parameters of a CTranslate2 teacher (e.g. Whisper tiny.en: 37.76 M) is read off the file's
variable table. The layout is the one ``ctranslate2.specs.model_spec.ModelSpec._serialize``
writes (binary version 6, little-endian)::

    u32 version, str spec name, u32 revision, u32 n_variables,
    n_variables x (str name, u8 rank, u32 dims[rank], u8 dtype, u32 n_bytes, n_bytes of data),
    u32 n_aliases, n_aliases x (str alias, str name)          # str = u16 length (with NUL) + bytes

Aliases name a variable again (tied weights) and are not counted twice.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

__all__ = ["BINARY_VERSION", "parameter_count", "variable_shapes"]

BINARY_VERSION = 6  # the model.bin layout read here (CTranslate2 4.x writes it)


def variable_shapes(model_bin: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of every variable stored in ``model_bin`` (a scalar's shape is ``()``).

    Raises:
        ValueError: the file is not a CTranslate2 ``model.bin`` of `BINARY_VERSION`, or is cut short.
    """
    path = Path(model_bin)
    shapes: dict[str, tuple[int, ...]] = {}
    with open(path, "rb") as f:

        def read(fmt: str):
            size = struct.calcsize("<" + fmt)
            data = f.read(size)
            if len(data) != size:
                raise ValueError(f"{path}: ends inside its variable table; the file is incomplete")
            return struct.unpack("<" + fmt, data)

        def read_str() -> str:
            (length,) = read("H")
            return f.read(length).rstrip(b"\0").decode("utf-8")

        (version,) = read("I")
        if version != BINARY_VERSION:
            raise ValueError(f"{path}: CTranslate2 binary version {version}, this reader knows version "
                             f"{BINARY_VERSION} (is it a CTranslate2 model.bin?)")
        read_str()  # the spec's name, e.g. WhisperSpec
        read("I")  # its revision
        (count,) = read("I")
        for _ in range(count):
            name = read_str()
            (rank,) = read("B")
            shapes[name] = read(f"{rank}I")
            _dtype, n_bytes = read("BI")
            f.seek(n_bytes, os.SEEK_CUR)
    return shapes


def parameter_count(model_bin: str | os.PathLike) -> int:
    """Elements over every variable of ``model_bin``: the model's parameters (a scalar setting
    stored as a variable, such as a flag, counts 1)."""
    return sum(math.prod(shape) for shape in variable_shapes(model_bin).values())
