"""Moved to :mod:`blip3o_storage.integrations.petrel_client`; this path stays importable because
users' configs name it (``custom_imports``, ``from blip3o_storage.petrel_client import ...``)."""
from blip3o_storage.integrations.petrel_client import *  # noqa: F403
