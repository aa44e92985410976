"""The interface every export format implements (mobile_export/formats.py lists them).

    exporter = EXPORTERS["tflite"]
    made = exporter.convert(source, "bundle/", ["fp32", "int8"], ExportOptions())
    # {"fp32": Artifact(...), "int8": Artifact(...) or the exception that stopped it}
    runner = exporter.open_runner(made["int8"].path, threads=1)
    log_probs = runner.run(pcm)          # float32 [T', V]

A format converts an `ExportSource` (the graph, its contract and vocabulary) into one file per
precision, ``model.<precision><suffix>`` in the output folder, and opens such a file in its
runtime (eval/runners.py). What it cannot verify by running, it may check (Core ML on Linux).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from eval.runners import Runner, open_runner
from mobile_export.bundle import Artifact, artifact_stem, remove_path

if TYPE_CHECKING:
    from mobile_export.options import ExportOptions
    from mobile_export.source import ExportSource


class Exporter(ABC):
    """One target format.

    Class attributes: ``name`` (the format's name in options, reports and runners), ``suffix``
    (of the files it writes), ``precisions`` (each precision it offers -> what that means,
    quoted in the report) and ``streaming`` (its artifacts take one chunk and the stream state
    per call, mobile_export/stream_export.py; verified chunk by chunk, latency instead of RTF).
    """

    name: ClassVar[str]
    suffix: ClassVar[str]
    precisions: ClassVar[dict[str, str]]
    streaming: ClassVar[bool] = False

    @abstractmethod
    def convert(self, source: ExportSource, out_dir: Path, precisions: Sequence[str],
                options: ExportOptions) -> dict[str, Artifact | Exception]:
        """Write ``source`` at each of ``precisions`` (all offered by this format) into
        ``out_dir``; per precision, the ``Artifact`` or the exception that stopped it.
        ``options``: the export's options; each format reads what applies to it (windows,
        Core ML shapes and target)."""

    def path(self, out_dir: Path, precision: str) -> Path:
        """Where the artifact of ``precision`` goes: ``out_dir/model.<precision><suffix>``."""
        return Path(out_dir) / (artifact_stem(precision) + self.suffix)

    def each_precision(self, out_dir: Path, precisions: Sequence[str],
                       build: Callable[[str, Path], Artifact]) -> dict[str, Artifact | Exception]:
        """``build(precision, path)`` for each precision; one that raises is recorded as its
        exception and its partial file removed, and the others go on."""
        results: dict[str, Artifact | Exception] = {}
        for precision in precisions:
            path = self.path(out_dir, precision)
            try:
                results[precision] = build(precision, path)
            except Exception as e:
                remove_path(path)
                results[precision] = e
        return results

    def open_runner(self, path: str | Path, threads: int = 1) -> Runner:
        """The artifact at ``path`` loaded in this format's runtime (eval/runners.py)."""
        return open_runner(self.name, path, threads)

    def check(self, artifact: Artifact, source: ExportSource) -> dict[str, Any] | None:
        """What is verified of a saved artifact without running it (the report's ``checks``);
        by default what its export recorded."""
        return artifact.checks or None

    def cannot_run(self, checks: dict[str, Any] | None) -> str | None:
        """Why this format's artifacts cannot run on this machine (None: they can); ``checks``
        are what `check` found, for the reason to quote."""
        return None
