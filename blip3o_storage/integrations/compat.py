"""Make ``from petrel_client.client import Client`` resolve to our drop-in.

Installing the project (``pip install .`` or ``pip install -e .``) already does
this through ``blip3o_petrel.pth`` and :mod:`blip3o_petrel_hook`, wherever no
real petrel_client is installed. :func:`install_petrel_client_shim` is the
same from inside a process (e.g. a config's ``custom_imports``, a source
checkout on ``PYTHONPATH`` without installing, or ``force=True`` to replace a
real client for this process).
"""
from __future__ import annotations

import importlib
import sys

import blip3o_petrel_hook as _hook


def _real_petrel_client_importable() -> bool:
    """True if a finder other than our hook provides ``petrel_client``."""
    for finder in sys.meta_path:
        if finder is _hook.PetrelClientFinder or not hasattr(finder, "find_spec"):
            continue
        try:
            if finder.find_spec(_hook.PACKAGE, None) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


def install_petrel_client_shim(force: bool = False) -> bool:
    """Make ``petrel_client.client.Client`` ours; return True if ours is now in place.

    Without ``force`` a real petrel_client (imported or importable) is left alone and
    False is returned; ``force=True`` replaces it in this process.
    """
    current = sys.modules.get(_hook.PACKAGE)
    if not force:
        if current is not None and not _hook.is_drop_in(current):
            return False
        if current is None and _real_petrel_client_importable():
            return False
    if force:
        for name in [n for n in sys.modules if n == _hook.PACKAGE or n.startswith(_hook.PACKAGE + ".")]:
            if not _hook.is_drop_in(sys.modules[name]):
                del sys.modules[name]
    _hook.install("ours" if force else "auto")
    importlib.import_module(_hook.PACKAGE + ".client")
    return True
