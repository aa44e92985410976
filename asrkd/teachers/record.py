"""`distilled_from`: the teacher a checkpoint learnt from, as its posterior cache recorded it.

A distilled checkpoint keeps its training config (``train_config``), whose ``kd.cache`` names the
posterior cache (or the caches, all of one teacher); the cache's ``request.json`` holds the
teacher's record (`Teacher.describe`: kind, weights fingerprint and, for a Whisper teacher,
``model``: name, source, licence). The export copies this into the bundle (contract.json
``model.teacher`` and the model card), so whoever ships the student knows whose weights it learnt
from and under which terms.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from asrkd.cache import REQUEST_FILE

__all__ = ["distilled_from"]


def distilled_from(train_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The teacher record of a checkpoint's ``train_config`` (None if it was not distilled).

    Returns ``{"spec", "cache", "recorded"}`` plus, when the cache folder is on this machine,
    ``kind``, ``weights`` (sha256 of the teacher's files or weights), ``config`` (sha256 of its
    decoding options) and ``model`` (name, source, license; only teachers that know them, such as
    Whisper). ``recorded`` says where the record came from, or why there is none.
    """
    kd = (train_config or {}).get("kd") or {}
    cache, spec = kd.get("cache"), kd.get("teacher")
    if not cache and not spec:
        return None
    out: dict[str, Any] = {"spec": spec, "cache": cache}
    # Read directly, not through asrkd.cache.PosteriorCache: the cache may be unfinished. Several
    # caches (kd.cache: [A, B]) come from one teacher (asrkd.cache.CacheSet): the first says which.
    first = cache[0] if isinstance(cache, list) and cache else cache
    request = Path(first) / REQUEST_FILE if first else None
    if request is None or not request.is_file():
        out["recorded"] = ("no cache: the teacher ran online, see spec" if request is None
                           else f"not recorded: {request} is not on this machine")
        return out
    try:
        record = json.loads(request.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # a damaged file (JSON, UTF-8): the export goes on without it
        out["recorded"] = f"not recorded: {request} is unreadable ({e})"
        return out
    teacher = (record.get("teacher") if isinstance(record, dict) else None) or {}
    out.update({k: teacher[k] for k in ("kind", "weights", "config", "model") if k in teacher})
    out["recorded"] = f"from {request}"
    return out
