"""Moved to :mod:`blip3o_storage.integrations.mmengine_backend`; this path stays importable because
users' configs name it (``custom_imports``, ``from blip3o_storage.mmengine_backend import ...``)."""
from blip3o_storage.integrations.mmengine_backend import *  # noqa: F403
