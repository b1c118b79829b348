"""Moved to :mod:`blip3o_storage.integrations.compat`; this path stays importable because
users' configs name it (``custom_imports``, ``from blip3o_storage.compat import ...``)."""
from blip3o_storage.integrations.compat import *  # noqa: F403
