"""One base class for the errors a user can cause: `AsrkdError`.

Every asrkd error about the user's input (a config key, a manifest line, an audio file, a
checkpoint, a cache folder, a KD setting) derives from it and says in its message which file
(and line or key) is wrong and how to fix it. The command line prints such an error as one line,
``asrkd <command>: <message>``, and exits with status 2; ``--debug`` or ``ASRKD_DEBUG=1`` shows
the traceback instead. Anything else that escapes is a bug in asrkd and keeps its traceback.

The concrete classes also derive from the built-in they always were (``ValueError`` mostly), so
``except ValueError`` in a user's code keeps catching them.
"""

from __future__ import annotations


class AsrkdError(Exception):
    """Base class of every error caused by the user's input; ``str(e)`` names the culprit."""
