"""Moved to :mod:`blip3o_storage.training.hooks`; this path stays importable because
users' configs name it (``custom_imports``, ``from blip3o_storage.hooks import ...``)."""
from blip3o_storage.training.hooks import *  # noqa: F403
