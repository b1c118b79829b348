"""Checkpoints on ``s3://`` through mmengine: loads read a stream, saves write one.

**Load** (``load_from``, ``resume``, ``mmengine.runner.load_checkpoint``,
``CheckpointHook``'s published model): mmengine's ``load_from_ceph`` asks for
the backend named ``'petrel'`` and ``torch.load``\\ s a BytesIO of the whole
object (object size twice in RAM during the load). :func:`install` registers
:func:`load_from_blip3o_s3` for the same prefixes (``s3://``,
``cluster:s3://``; ``force=True``): it ``torch.load``\\ s from
``Storage.open(uri, 'rb')``, a seekable reader doing parallel ranged GETs with
bounded buffers. If the ``s3`` prefix is served by another backend (someone
registered theirs after us) it hands the call to mmengine's loader unchanged.
``backend_args=dict(backend='petrel')`` in hooks and ``fileio`` calls keeps
working through mmengine's PetrelBackend over our drop-in ``Client``; so does
``load_from_ceph`` itself.

torch >= 2.6 loads with ``weights_only=True`` by default, which refuses what
mmengine's Runner stores besides weights (``HistoryBuffer`` and its bound
methods, i.e. ``getattr``: nothing that can be allowlisted safely), so
``resume`` fails even from a local disk. The loader keeps torch's safe default;
``BLIP3O_TRUSTED_CHECKPOINTS=1`` says the store is yours and loads with full
unpickling (what mmengine assumed before torch 2.6). A refusal is an
:class:`~blip3o_storage.errors.UntrustedDataError` naming the URI and that
variable; a cut-short or non-checkpoint object a
:class:`~blip3o_storage.errors.CorruptDataError` naming the URI and its size.

**Save**: mmengine's ``save_checkpoint`` does ``torch.save`` into a BytesIO and
``put(f.getvalue())``: the tensors and their serialized bytes in RAM at once
(measured: 249 MiB above the process for a 192 MiB state), and one PUT capped
at 5 GiB. mmengine has no registry for saving, so
:func:`install` rebinds ``save_checkpoint`` where mmengine's Runner, hooks and
strategies look it up to :func:`save_checkpoint`, which for an ``s3://``
filename whose backend is ours ``torch.save``\\ s straight into
``Storage.open(uri, 'wb')`` (a multipart upload: memory bounded by part size x
concurrency, nothing visible until it completes, aborted on an exception).
Everything else goes to mmengine's function unchanged.
``BLIP3O_STREAM_CHECKPOINT_SAVE=0`` turns streaming off (read at each save).
"""
from __future__ import annotations

import importlib
import os
import pickle
import sys
from typing import Any, Callable, Optional

import torch
from mmengine.runner.checkpoint import CheckpointLoader

from blip3o_storage.errors import CorruptDataError, StorageError, UntrustedDataError

TRUST_ENV = "BLIP3O_TRUSTED_CHECKPOINTS"
STREAM_SAVE_ENV = "BLIP3O_STREAM_CHECKPOINT_SAVE"
S3_PREFIXES = (r"(\S+\:)?s3://",)  # the key mmengine's load_from_ceph is registered under
# Modules that bind ``save_checkpoint`` at import time (``from .checkpoint import save_checkpoint``);
# the strategies that import it inside a function read mmengine.runner.checkpoint's, rebound too.
SAVE_BINDINGS = (  # the _strategy ones only where already imported
    "mmengine.runner.checkpoint", "mmengine.runner.runner", "mmengine.runner",
    "mmengine._strategy.deepspeed", "mmengine._strategy.colossalai")


def _ours(filename: Any, backend_args: Optional[dict] = None) -> Any:
    """The S3FileBackend mmengine would use for ``filename``, or None if it is not an s3 URI served by ours."""
    from blip3o_storage.integrations.mmengine_backend import backend_for  # it imports this module

    return backend_for(filename, backend_args)


# -- load ------------------------------------------------------------------
def torch_load(backend: Any, uri: str, map_location: Any = None) -> Any:
    """``torch.load`` of the object ``uri`` through ``backend.open(uri, 'rb')`` (streamed)."""
    trusted = os.environ.get(TRUST_ENV, "") == "1"
    with backend.open(uri, "rb") as fh:
        try:
            return torch.load(fh, map_location=map_location, weights_only=not trusted)
        except StorageError:
            raise
        except pickle.UnpicklingError as exc:
            if "Unsupported global" in str(exc):  # a class weights_only refuses, not a broken file
                raise UntrustedDataError(
                    f"{uri}: torch.load(weights_only=True) refused the checkpoint's Python objects "
                    f"({_first_line(exc, 'Unsupported global')}); mmengine's Runner state needs full "
                    f"unpickling, which can run code: set {TRUST_ENV}=1 if this store is yours") from exc
            raise _corrupt(backend, uri, exc) from exc
        except (RuntimeError, EOFError, ValueError, OSError) as exc:
            raise _corrupt(backend, uri, exc) from exc


def _corrupt(backend: Any, uri: str, exc: BaseException) -> CorruptDataError:
    try:
        size = f"{backend.storage.stat(uri).size:,} bytes"
    except StorageError:
        size = "size unknown"
    return CorruptDataError(f"{uri}: not a readable torch checkpoint ({size}; cut short or not written by "
                            f"torch.save): {_first_line(exc)}")


def _first_line(exc: BaseException, containing: str = "") -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    picked = [line for line in lines if containing and containing in line] or lines or [type(exc).__name__]
    return picked[0][:300]


def load_from_blip3o_s3(filename: str, map_location: Any = None) -> Any:
    """mmengine checkpoint loader for ``[cluster:]s3://``: streamed by our backend, else mmengine's."""
    backend = _ours(filename)
    if backend is None:
        return _original_loader()(filename, map_location)
    return torch_load(backend, filename, map_location)


def _original_loader() -> Callable[..., Any]:
    from mmengine.runner.checkpoint import load_from_ceph

    return load_from_ceph


# -- save ------------------------------------------------------------------
def _original_save() -> Callable[..., Any]:
    current = importlib.import_module("mmengine.runner.checkpoint").save_checkpoint
    return getattr(current, "__wrapped__", current)


def save_checkpoint(checkpoint: Any, filename: str, file_client_args: Optional[dict] = None,
                    backend_args: Optional[dict] = None) -> None:
    """mmengine's ``save_checkpoint``, streaming ``torch.save`` into a multipart upload when
    ``filename`` is ``s3://`` served by our backend (and no deprecated ``file_client_args``)."""
    backend = None
    if file_client_args is None and os.environ.get(STREAM_SAVE_ENV, "1") != "0":
        backend = _ours(filename, backend_args)
    if backend is None:
        return _original_save()(checkpoint, filename, file_client_args, backend_args)
    with backend.open(filename, "wb") as fh:
        torch.save(checkpoint, fh)
    return None


save_checkpoint.__wrapped__ = _original_save()  # type: ignore[attr-defined]  # mmengine's, for delegation


def install() -> None:
    """Register the loader and rebind ``save_checkpoint`` (idempotent; a binding someone else changed
    is left alone)."""
    CheckpointLoader.register_scheme(list(S3_PREFIXES), load_from_blip3o_s3, force=True)
    original = _original_save()
    for name in SAVE_BINDINGS:
        module = sys.modules.get(name) if name.startswith("mmengine._strategy") else importlib.import_module(name)
        binding = getattr(module, "save_checkpoint", None)
        if module is not None and getattr(binding, "__wrapped__", binding) is original:
            module.save_checkpoint = save_checkpoint  # type: ignore[attr-defined]
