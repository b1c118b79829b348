"""Moved to :mod:`blip3o_storage.training.locality_sampler`; this path stays importable because
users' configs name it (``custom_imports``, ``from blip3o_storage.locality_sampler import ...``)."""
from blip3o_storage.training.locality_sampler import *  # noqa: F403
