"""``import petrel_client`` falls back to blip3o-storage's drop-in.

Installing the project puts ``blip3o_petrel.pth`` in site-packages; its one
line imports this module at interpreter start-up, which *appends* a finder
to ``sys.meta_path``. The finders before it (the normal path search) are
asked first, so a real, installed petrel_client always wins; only when none
is found does ``from petrel_client.client import Client`` give
:class:`blip3o_storage.integrations.petrel_client.Client`. Nothing is imported at start-up
beyond this file (no boto3, no torch): blip3o_storage is loaded only when
``petrel_client.client`` itself is imported.

``BLIP3O_PETREL_CLIENT`` (read at start-up) chooses:

* ``auto`` (default): ours only where no real petrel_client is installed;
* ``ours``: ours even where a real one is installed (the finder goes first);
* ``off``: no fallback (``import petrel_client`` fails without the real one).
"""
from __future__ import annotations

import os
import sys
from importlib.machinery import ModuleSpec  # loaded at start-up anyway, as are types and __future__
from types import ModuleType

# typing and importlib.abc are not loaded at start-up, and this module runs in every interpreter:
# the checkers read them, the running code does not (annotations stay strings, the base is object).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from importlib.abc import Loader as _LoaderBase
    from typing import Optional, Sequence
else:
    _LoaderBase = object

ENV_VAR = "BLIP3O_PETREL_CLIENT"
PACKAGE = "petrel_client"
MODULES = (PACKAGE, PACKAGE + ".client")
_MODES = ("auto", "ours", "off")


class _Loader(_LoaderBase):
    """Fills the shim modules; ``petrel_client.client`` re-exports our Client."""

    def create_module(self, spec: ModuleSpec) -> Optional[ModuleType]:  # default module creation
        return None

    def exec_module(self, module: ModuleType) -> None:
        names = vars(module)  # the module's namespace: names the type of ModuleType does not declare
        names["__blip3o_drop_in__"] = True
        if module.__name__ == PACKAGE:
            module.__doc__ = "blip3o-storage's drop-in for the closed petrel_client (see blip3o_petrel_hook)."
            return
        from blip3o_storage.integrations.petrel_client import DEFAULT_CONF_PATH, Client

        names.update(Client=Client, DEFAULT_CONF_PATH=DEFAULT_CONF_PATH)
        module.__doc__ = "petrel_client.client served by blip3o_storage.integrations.petrel_client."


_LOADER = _Loader()


class PetrelClientFinder:
    """A meta-path finder for ``petrel_client`` and ``petrel_client.client`` only."""

    @classmethod
    def find_spec(cls, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[ModuleType] = None) -> Optional[ModuleSpec]:
        if fullname not in MODULES:
            return None
        if fullname != PACKAGE and not is_drop_in(sys.modules.get(PACKAGE)):
            return None  # a real petrel_client package: its own submodules only
        return ModuleSpec(fullname, _LOADER, origin="blip3o_storage.integrations.petrel_client",
                          is_package=fullname == PACKAGE)

    @classmethod
    def invalidate_caches(cls) -> None:
        pass


def is_drop_in(module: object) -> bool:
    """True for a module this hook (or blip3o_storage.integrations.compat) created."""
    return bool(getattr(module, "__blip3o_drop_in__", False))


def install(mode: Optional[str] = None) -> bool:
    """Put the finder on ``sys.meta_path`` per ``mode`` (default: $BLIP3O_PETREL_CLIENT or
    ``auto``); True if it is installed."""
    mode = (mode if mode is not None else os.environ.get(ENV_VAR, "auto")).strip().lower() or "auto"
    if mode not in _MODES:
        sys.stderr.write(f"blip3o_petrel_hook: {ENV_VAR}={mode!r} is not one of {', '.join(_MODES)}; "
                         f"using auto\n")
        mode = "auto"
    while PetrelClientFinder in sys.meta_path:
        sys.meta_path.remove(PetrelClientFinder)
    if mode == "off":
        return False
    if mode == "ours":
        sys.meta_path.insert(0, PetrelClientFinder)
    else:
        sys.meta_path.append(PetrelClientFinder)
    return True
