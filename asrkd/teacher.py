"""The teacher adapters, under their first import path; they live in `asrkd.teachers` (one module
per kind of teacher). ``from asrkd.teacher import load_teacher`` and friends keep working."""

from asrkd.teachers import *  # noqa: F403
from asrkd.teachers import __all__  # noqa: F401
