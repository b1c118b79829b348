"""The ``BUILDER`` registry and :func:`build_component`.

OpenUni builds its tokenizer and image processor with xtuner's ``BUILDER``;
this package must not need xtuner, so it has its own mmengine registry of
the same name. ``build_component`` accepts what OpenUni configs pass: an
already-built object, a class, or an mmengine-style ``dict(type=...)``
whose ``type`` is a class, a callable or a registered/dotted name.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from mmengine.registry import Registry

from blip3o_storage.errors import ConfigError

#: Registry for tokenizers, datasets and collate functions of this package.
BUILDER = Registry("builder")


def resolve_type(type_: Any, registry: Registry = BUILDER) -> Callable[..., Any]:
    """Turn a config ``type`` into something callable.

    Strings are looked up in ``registry`` first, then imported as a dotted
    ``package.module.Name`` path (how HF classes are usually named in configs).
    """
    if callable(type_):
        return type_
    if not isinstance(type_, str) or not type_:
        raise ConfigError(f"config 'type' must be a class, a callable or a name, not {type_!r}")
    found = registry.get(type_)
    if found is not None:
        return found
    module_name, _, attr = type_.rpartition(".")
    if module_name:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"config type {type_!r}: cannot import {module_name!r} ({exc})") from None
        if hasattr(module, attr):
            return getattr(module, attr)
    known = ", ".join(sorted(registry.module_dict)) or "none"
    raise ConfigError(f"config type {type_!r} is not registered in {registry.name!r} (known: {known}) "
                      f"and is not an importable dotted path; import the module that registers it")


def build_component(spec: Any, registry: Registry = BUILDER) -> Any | None:
    """Build ``spec`` into an object.

    * ``None`` -> ``None``;
    * a mapping with ``type`` -> ``type(**rest)`` (``type`` resolved by :func:`resolve_type`);
    * a class -> an instance made with no arguments;
    * anything else (an instance, a function, an HF tokenizer) -> returned as is.
    """
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        if "type" not in spec:
            raise ConfigError(f"config dict {dict(spec)!r} has no 'type' key")
        kwargs = {k: v for k, v in spec.items() if k != "type"}
        factory = resolve_type(spec["type"], registry)
        return factory(**kwargs)
    if inspect.isclass(spec):
        return spec()
    return spec
