"""Moved to :mod:`blip3o_storage.training.dataset`; this path stays importable because
users' configs name it (``custom_imports``, ``from blip3o_storage.dataset import ...``)."""
from blip3o_storage.training.dataset import *  # noqa: F403
