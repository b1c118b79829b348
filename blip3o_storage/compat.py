"""Make ``from petrel_client.client import Client`` resolve to our drop-in.

OpenUni imports the closed client by that name. Call
:func:`install_petrel_client_shim` once (e.g. from a config's
``custom_imports``) and its code runs unmodified; a real petrel_client, if
importable, is left alone unless ``force=True``.
"""
from __future__ import annotations

import importlib.util
import sys
import types

from . import petrel_client as _ours


def install_petrel_client_shim(force: bool = False) -> bool:
    """Register the shim modules; return True if ours is now in place."""
    if not force and "petrel_client" not in sys.modules and importlib.util.find_spec("petrel_client") is not None:
        return False
    package = types.ModuleType("petrel_client")
    package.__path__ = []  # mark as a package
    client_module = types.ModuleType("petrel_client.client")
    client_module.Client = _ours.Client
    package.client = client_module
    sys.modules["petrel_client"] = package
    sys.modules["petrel_client.client"] = client_module
    return True
