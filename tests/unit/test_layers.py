"""The layer contract (issue #15): every module under blip3o_storage/ imports only the layers below it,
and ``import blip3o_storage`` loads neither torch nor mmengine.

Layers, lowest first: errors <- storage <- reading <- training; integrations and transfer use storage
(and reading); cli uses anything but testing; nothing in the package imports cli or testing, except
cli and testing themselves. The package root (``__init__``) re-exports errors and storage only; the
shim modules at the top level (``blip3o_storage/dataset.py`` ...) re-export one layer each.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import blip3o_storage

PACKAGE = Path(blip3o_storage.__file__).resolve().parent
ROOT = "__root__"  # `import blip3o_storage` / `from blip3o_storage import X`: errors + storage

_LOW = {"errors", "storage", ROOT}
ALLOWED: dict[str, set[str]] = {
    "errors": {"errors"},
    "storage": {"errors", "storage"},
    "reading": _LOW | {"reading"},
    "training": _LOW | {"reading", "training"},
    "integrations": _LOW | {"reading", "integrations"},
    "transfer": _LOW | {"reading", "transfer"},
    # cli may use testing: `blip3o-demo` runs the job end to end on the embedded moto S3 server
    "cli": _LOW | {"reading", "training", "integrations", "transfer", "cli", "testing"},
    "testing": _LOW | {"reading", "training", "integrations", "transfer", "cli", "testing"},
    "__init__": {"errors", "storage"},
    # the shims at the module paths configs name: each re-exports its new home
    "dataset": {"training"},
    "hooks": {"training"},
    "locality_sampler": {"training"},
    "mmengine_backend": {"integrations"},
    "petrel_client": {"integrations"},
    "compat": {"integrations"},
}
LAYER_DIRS = {"storage", "reading", "training", "integrations", "transfer", "cli", "testing"}


def _layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    return rel[0] if len(rel) > 1 else rel[0][:-len(".py")]


def _package_of(path: Path) -> tuple[str, ...]:
    """Dotted package of a module, for resolving relative imports."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return rel if path.name == "__init__.py" else rel[:-1]


def _imported(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the module, at any depth (lazy ones too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(path)[:len(_package_of(path)) - (node.level - 1)]
                module = ".".join(base + ((node.module,) if node.module else ()))
            else:
                module = node.module or ""
            if module == "blip3o_storage":  # `from blip3o_storage import x`: x may be a submodule
                for alias in node.names:
                    submodule = (PACKAGE / alias.name).is_dir() or (PACKAGE / f"{alias.name}.py").is_file()
                    yield node.lineno, f"blip3o_storage.{alias.name}" if submodule else "blip3o_storage"
            else:
                yield node.lineno, module


def _target_layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return ROOT
    return parts[1]


def _modules() -> list:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    for path in _modules():
        assert _layer_of(path) in ALLOWED, f"{path.relative_to(PACKAGE)}: no layer rule for it"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} <= LAYER_DIRS


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_allowed_layers(path: Path) -> None:
    layer = _layer_of(path)
    bad = [f"line {line}: {module} ({_target_layer(module)})" for line, module in _imported(path)
           if module.split(".")[0] == "blip3o_storage" and _target_layer(module) not in ALLOWED[layer]]
    assert not bad, f"{path.relative_to(PACKAGE)} (layer {layer}) imports outside {sorted(ALLOWED[layer])}: {bad}"


def test_import_loads_neither_torch_nor_mmengine() -> None:
    code = ("import sys, blip3o_storage\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mmengine'))\n"
            "print(heavy)\n"
            "sys.exit(1 if heavy else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"import blip3o_storage loaded: {proc.stdout.strip()} {proc.stderr[-2000:]}"
