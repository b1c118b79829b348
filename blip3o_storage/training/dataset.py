"""Drop-ins for OpenUni's ``CaptionDataset`` and ``BLIP3oDataset``.

Same constructor keywords and sample dict as OpenUni's
``src/datasets/text2image/caption_datasets.py``, but every byte goes through
:class:`~blip3o_storage.Storage` (boto3, any S3-compatible store, or local
disk), no xtuner or closed ``petrel_client`` is needed, and bad samples are
retried a bounded number of times, logged and counted instead of recursing
forever behind a ``print``.

Where data comes from, per sample:

* images and captions: ``ceph_folder/<relpath>`` when ``ceph_folder`` is set,
  else ``image_folder`` / ``cap_folder``. With both set, a failed remote read
  (unreachable or unconfigured store, missing object) falls back to the
  local copy if it exists; that is counted as ``read_counts['fallback_local']``
  and logged once per process.
* latents: ``latents_ceph_folder/<image>.pt`` (fallback ``image_latents_folder``).
* ``data_path``: a ``.json`` file or a folder of them, local or ``s3://``.

How ``ceph_folder`` reads happen is one :class:`~blip3o_storage.reading.sources.SampleSource`:
one object per file (default), or, with ``shard_index=`` (the ``index.json``
of ``tools/upload_shards.py``), a ranged GET into the original tar shards in
``ceph_folder``, the same data.json resolving through the index; either can
sit behind a size-bounded local disk cache (``cache_dir``/``cache_max_bytes``).
``prefetch=N`` reads the bytes of the next N samples this worker will get in
background threads (see :mod:`blip3o_storage.reading.prefetch`; give it the sampler
with :meth:`CaptionDataset.set_sampler`).

Counters (``bad_sample_counts``, ``read_counts``, ``bad_samples_log``) live
in the process that reads: with ``num_workers=0`` that is the main process;
with DataLoader workers each worker has its own copy (forked from the
parent), so read them in the worker (e.g. ``get_worker_info().dataset``) or
rely on the log, where every bad sample and the first fallback of each
worker is written (logger ``blip3o_storage.training.dataset``).
"""
from __future__ import annotations

import collections
import functools
import io
import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from botocore.exceptions import NoCredentialsError
from mmengine.registry import DATASETS
from torch.utils.data import Dataset

from blip3o_storage.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    ConfigError,
    CorruptDataError,
    InvalidPathError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)
from blip3o_storage.reading.bounded_json import loads_bounded
from blip3o_storage.reading.data_json import entry_dict
from blip3o_storage.reading.prefetch import Prefetcher
from blip3o_storage.reading.sample_table import SampleTable
from blip3o_storage.reading.sources import LocalityKey, ObjectSource, SampleSource, build_source
from blip3o_storage.reading.table_cache import CacheDir, data_files, load_sample_table, missing_bucket, read_entries
from blip3o_storage.storage.facade import ConfigLike, Storage
from blip3o_storage.storage.local_backend import PathTooLongError
from blip3o_storage.storage.process_state import ProcessLocal
from blip3o_storage.storage.uri import is_s3_uri, join_uri, parse_uri
from blip3o_storage.training.image_ops import ImageRejectedError, load_pixel_values
from blip3o_storage.training.registry import BUILDER, build_component
from blip3o_storage.training.tokenizers import prompt_input_ids

logger = logging.getLogger(__name__)

DEFAULT_TOKENIZER_KWARGS = {"add_special_tokens": True}
_OBJECTS = ObjectSource()


class SampleRetriesExhaustedError(StorageError):
    """Every attempt to load a sample (the original and its replacements) failed."""


class BadCaptionError(CorruptDataError):
    """A caption file was read but holds no usable caption."""


class EmptyCaptionError(BadCaptionError):
    """The caption is empty or whitespace only (after a UTF-8 BOM is dropped):
    training on it would teach the model that "Generate an image: " means this
    image, which is not the deliberate empty prompt of ``unconditional``."""


_BOM = "\ufeff"


def clean_caption(caption: str, where: str) -> str:
    """``caption`` without a leading UTF-8 BOM (Windows editors write one; it is
    not whitespace to ``str.strip``); EmptyCaptionError naming ``where`` when
    nothing but whitespace is left."""
    head = caption.lstrip()
    if head.startswith(_BOM):
        caption = head[len(_BOM):]
    if not caption.strip():
        raise EmptyCaptionError(f"{where}: caption is empty or whitespace only ({caption[:16]!r}); "
                                f"write a caption or drop the entry from data.json")
    return caption


@dataclass(frozen=True)
class BadSample:
    """One rejected sample: which entry, which file, why."""

    index: int
    image: str
    uri: str
    reason: str
    message: str


def classify_bad_sample(exc: BaseException) -> str | None:
    """The counter name for a sample-level failure, or None when ``exc`` is a
    setup problem (bad config, bad folder URI, a bug) that must propagate."""
    if isinstance(exc, ImageRejectedError):
        return exc.reason
    if isinstance(exc, EmptyCaptionError):
        return "empty_caption"
    if isinstance(exc, BadCaptionError):
        return "bad_caption"
    if isinstance(exc, CorruptDataError):
        return "corrupt"
    if isinstance(exc, BucketNotFoundError):
        return None  # every sample of the folder would fail: one clear error, not N "missing"
    if isinstance(exc, ObjectNotFoundError):
        return "missing"
    if isinstance(exc, TransientStorageError):
        return "transient"
    if isinstance(exc, AccessDeniedError):
        return "access_denied"
    if isinstance(exc, PathTooLongError):
        return "bad_path"  # one entry the local file system cannot name; the others can be read
    if isinstance(exc, (ConfigError, InvalidPathError, SampleRetriesExhaustedError)):
        return None
    if isinstance(exc, StorageError):
        return "storage_error"
    return None


def _store_unavailable(exc: BaseException) -> bool:
    """The store as a whole is down or not configured (vs one object missing)."""
    if isinstance(exc, (TransientStorageError, ConfigError)):
        return True
    return isinstance(exc, AccessDeniedError) and isinstance(exc.__cause__, NoCredentialsError)


def _should_fall_back(exc: BaseException) -> bool:
    """Remote failures that a local copy can stand in for: store down or not
    configured (no config file, no credentials), or the object not there."""
    return isinstance(exc, ObjectNotFoundError) or _store_unavailable(exc)


# -- data.json ------------------------------------------------------------
def load_data_list(data_path: str, storage: Storage) -> list[dict[str, str]]:
    """Entries of ``data_path`` as a list of dicts: one ``.json`` file, or every ``*.json``
    in a folder (sorted, so every rank sees the same order), local or S3. The datasets
    hold a :class:`~blip3o_storage.reading.sample_table.SampleTable` instead (see
    :func:`~blip3o_storage.reading.table_cache.load_sample_table`); this list is for tools
    and small files."""
    files = data_files(data_path, storage)
    entries = [entry_dict(e) for part in read_entries(os.fspath(data_path), storage, files) for e in part]
    if not entries:  # an empty list is valid JSON, but a 0-sample dataset only fails later, far from here
        raise ConfigError(f"data_path {data_path}: no entries in {', '.join(files)}; "
                          f"write the samples there (tools/make_data_json.py) or point data_path elsewhere")
    return entries


_missing_bucket = missing_bucket


# -- the datasets ---------------------------------------------------------
@BUILDER.register_module(force=True)
class CaptionDataset(Dataset, ProcessLocal):
    """Image + ``.json`` caption (``annotation[cap_source]``) -> OpenUni sample.

    Keywords match OpenUni's; those after ``unconditional`` are ours:
    ``max_retries`` bounds the replacement attempts for a bad sample,
    ``retry_seed`` makes the replacements reproducible, ``crop`` is
    ``'center'`` (deterministic) or ``'random'`` (OpenUni's crop2square),
    ``inline_captions`` uses an entry's ``caption`` (``make_data_json.py
    --inline-captions``) instead of reading its caption file;
    ``local_fallback`` allows reading the local copy when the store fails;
    after the store is found down or unconfigured, reads with a local copy
    skip it for ``fallback_cooldown`` seconds (per process) instead of paying
    connection timeouts and retries on every file.
    ``shard_index`` (URI of an ``index.json``; ``ceph_folder`` then names the
    folder holding the tars) switches ``ceph_folder`` reads to ranged GETs
    into tar shards; ``cache_dir``/``cache_max_bytes`` put a local disk cache
    in front of ``ceph_folder`` reads; ``prefetch``/``prefetch_threads``
    fetch upcoming samples' bytes in background threads;
    ``shard_block_bytes`` (shard mode) reads tars in aligned blocks of that
    many bytes, one GET per block, members served from memory: use it with
    :class:`~blip3o_storage.training.locality_sampler.LocalitySampler`, which keeps
    each worker inside a block (see :meth:`locality_groups`).
    ``image_processor`` is built and kept (as OpenUni does) but not applied.
    ``table_cache_dir``: where the packed data.json table is built once per node and mapped by
    every rank and worker (default ``$BLIP3O_TABLE_CACHE``, else ``<tempdir>/blip3o-cache-<uid>/tables``;
    ``False`` keeps it in memory, one copy per rank); see :mod:`blip3o_storage.reading.table_cache`.
    """

    #: Per process (rebuilt in a forked worker or an unpickled copy): the Storage with its clients,
    #: the time until which the store counts as down, whether the first fallback was logged.
    _process_state = ("_storage", "_remote_down_until", "_fallback_logged")

    def __init__(self,
                 data_path: str,
                 image_folder: str | None = None,
                 debug: bool = False,
                 image_processor: Any = None,
                 ceph_folder: str | None = None,
                 latents_ceph_folder: str | None = None,
                 ceph_config: ConfigLike = None,
                 tokenizer: Any = None,
                 prompt_template: Mapping[str, Any] | None = None,
                 max_length: int = 128,
                 min_image_size: int = 80,
                 image_size: int = 256,
                 image_length: int = 256,
                 image_tokens_folder: str | None = None,
                 image_latents_folder: str | None = None,
                 cap_folder: str | None = None,
                 cap_source: str = "caption",
                 tokenizer_kwargs: Mapping[str, Any] | None = None,
                 unconditional: float = 0.1,
                 *,
                 max_retries: int = 10,
                 retry_seed: int = 0,
                 crop: str = "center",
                 max_aspect_ratio: float = 10.0,
                 local_fallback: bool = True,
                 fallback_cooldown: float = 60.0,
                 bad_samples_log_size: int = 1000,
                 shard_index: str | None = None,
                 cache_dir: str | None = None,
                 cache_max_bytes: int | None = None,
                 prefetch: int = 0,
                 prefetch_threads: int = 4,
                 inline_captions: bool = True,
                 shard_block_bytes: int = 0,
                 table_cache_dir: CacheDir = None) -> None:
        super().__init__()
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, not {max_retries}")
        if shard_index is not None and ceph_folder is None:
            raise ConfigError("shard_index needs ceph_folder: the folder (e.g. s3://bucket/prefix) holding the tars")
        if prefetch < 0 or prefetch_threads < 1:
            raise ConfigError(f"prefetch must be >= 0 and prefetch_threads >= 1 (got {prefetch}, {prefetch_threads})")
        if shard_block_bytes and shard_index is None:
            raise ConfigError("shard_block_bytes needs shard_index: block reads are ranged GETs into tar shards")
        if shard_block_bytes and shard_block_bytes < 4096:
            raise ConfigError(f"shard_block_bytes must be 0 (off) or >= 4096, not {shard_block_bytes}")
        if cache_max_bytes is not None and cache_max_bytes <= 0:
            raise ConfigError(f"cache_max_bytes must be > 0, not {cache_max_bytes}")
        if crop not in ("center", "random"):
            raise ConfigError(f"crop must be 'center' or 'random', not {crop!r}")
        for _name, folder in (("image_folder", image_folder), ("cap_folder", cap_folder),
                             ("ceph_folder", ceph_folder), ("latents_ceph_folder", latents_ceph_folder),
                             ("image_latents_folder", image_latents_folder),
                             ("image_tokens_folder", image_tokens_folder)):
            if folder is not None:
                parse_uri(os.fspath(folder))  # fail now on a bad scheme, not per sample
        has_image_source = any(f is not None for f in (image_folder, ceph_folder, latents_ceph_folder,
                                                       image_latents_folder, image_tokens_folder))
        if not has_image_source:
            raise ConfigError("no image source: set ceph_folder, image_folder, latents_ceph_folder, "
                              "image_latents_folder or image_tokens_folder")
        if cap_folder is None and ceph_folder is None:
            raise ConfigError("no caption source: set ceph_folder or cap_folder")
        if tokenizer is None:
            raise ConfigError("tokenizer is required (an instance, a callable or dict(type=...), "
                              "e.g. dict(type='ByteTokenizer'))")

        self.data_path = os.fspath(data_path)
        self.image_folder = image_folder
        self.cap_folder = cap_folder
        self.cap_source = cap_source
        self.debug = debug
        self.ceph_folder = ceph_folder
        self.ceph_config = ceph_config
        self.latents_ceph_folder = latents_ceph_folder
        self.image_latents_folder = image_latents_folder
        self.image_tokens_folder = image_tokens_folder
        self.image_processor = build_component(image_processor)
        self.tokenizer = build_component(tokenizer)
        self.prompt_template = dict(prompt_template) if prompt_template is not None else None
        self.tokenizer_kwargs = dict(DEFAULT_TOKENIZER_KWARGS if tokenizer_kwargs is None else tokenizer_kwargs)
        self.max_length = max_length
        self.min_image_size = min_image_size
        self.image_size = image_size
        self.image_length = image_length
        self.unconditional = unconditional
        self.max_retries = max_retries
        self.retry_seed = retry_seed
        self.crop = crop
        self.max_aspect_ratio = max_aspect_ratio
        self.local_fallback = local_fallback
        self.fallback_cooldown = fallback_cooldown
        #: Use an entry's ``caption`` (``make_data_json.py --inline-captions``) instead of reading its file.
        self.inline_captions = inline_captions
        #: Node-local folder of the packed data.json table (None: the default, False: in memory).
        self.table_cache_dir = table_cache_dir

        #: Bad samples per reason (missing, corrupt, too_small, bad_aspect, bad_caption, empty_caption,
        #: bad_path, transient, access_denied, storage_error), in this process.
        self.bad_sample_counts: collections.Counter = collections.Counter()
        #: Reads per source: remote, local, fallback_local, in this process.
        self.read_counts: collections.Counter = collections.Counter()
        #: Bytes of those reads from the store ("remote"), in this process (MB/s in StorageHealthHook).
        self.read_bytes: collections.Counter = collections.Counter()
        #: The most recent bad samples (BadSample records), in this process.
        self.bad_samples_log: collections.deque[BadSample] = collections.deque(maxlen=bad_samples_log_size)

        # One throwaway Storage for the set-up reads (data.json, shard index): the dataset itself
        # holds no client until the first sample (DataLoader workers fork).
        setup_storage = Storage(self.ceph_config)
        self._load_data(self.data_path, setup_storage)
        self.shard_index = shard_index
        #: How ceph_folder reads happen (ObjectSource / ShardSource, maybe inside a CachedSource).
        self.sample_source: SampleSource = build_source(setup_storage, shard_index, cache_dir, cache_max_bytes,
                                                        block_bytes=shard_block_bytes)
        self._prefetcher: Prefetcher | None = (Prefetcher(prefetch, prefetch_threads)
                                                  if prefetch > 0 and ceph_folder is not None else None)

    # -- plumbing ---------------------------------------------------------
    def _init_process_state(self) -> None:
        self._storage: Storage | None = None
        self._remote_down_until = 0.0  # monotonic time
        self._fallback_logged = False
    def _load_data(self, data_path: str, storage: Storage | None = None) -> None:
        """Read data.json with a throwaway Storage (``storage``, else a new one): the
        dataset itself holds no client until the first sample (DataLoader workers fork)."""
        #: The entries, packed (see :mod:`blip3o_storage.reading.sample_table`): ``data_list[i]`` is a dict.
        self.data_list: SampleTable = load_sample_table(
            data_path, storage if storage is not None else Storage(self.ceph_config), self.table_cache_dir)
        logger.info("loaded %d samples from %s (%s)", len(self.data_list), data_path, self.data_list)

    @property
    def storage(self) -> Storage:
        """This process's Storage, made on first use (clients are per pid inside)."""
        self._check_process()
        if self._storage is None:
            self._storage = Storage(self.ceph_config)
        return self._storage

    def __len__(self) -> int:
        return len(self.data_list)

    def set_sampler(self, sampler: Any, batch_size: int = 1, drop_last: bool = False) -> None:
        """Tell prefetch the order samples will be asked in: the DataLoader's
        ``sampler`` (or a list of indices) and its ``batch_size``/``drop_last``.
        Call it before creating the DataLoader iterator (workers get a copy)."""
        if self._prefetcher is not None:
            self._prefetcher.set_sampler(sampler, batch_size, drop_last)

    def set_epoch_order(self, indices: Sequence[int], batch_size: int = 1, drop_last: bool = False) -> None:
        """:meth:`set_sampler` with an explicit index order (e.g. ``list(sampler)``)."""
        self.set_sampler([int(i) for i in indices], batch_size, drop_last)

    def stats(self) -> dict[str, Any]:
        """A snapshot of this process's counters (plus per-cluster S3 retries)."""
        out = {"bad_samples": dict(self.bad_sample_counts), "reads": dict(self.read_counts),
               "read_bytes": dict(self.read_bytes),
               "storage_retries": self.storage.retry_stats() if self._storage is not None else {}}
        if self._prefetcher is not None:
            out["prefetch"] = self._prefetcher.stats()
        out.update(self.sample_source.stats())  # "cache" with cache_dir, "blocks" with block reads
        return out

    def locality_groups(self) -> list[list[int]] | None:
        """Sample indices grouped by where their bytes live, groups in storage order:
        in shard mode one group per (tar, aligned block), i.e. per block-read GET.
        None when reads have no locality to speak of (one object per file, local
        files). :class:`~blip3o_storage.training.locality_sampler.LocalitySampler` uses it.

        Every member located on the way is also handed to the source as expected
        (:meth:`SampleSource.expect`): block reads then fetch a block only from the
        first to the last of this data.json's members in it, at no extra lookup."""
        source, folder = self.sample_source, self.ceph_folder
        if folder is None or not source.has_locality():
            return None
        groups: dict[tuple[int, LocalityKey | int | None], list[int]] = {}
        for i, sample in enumerate(self.data_list):
            relpaths = self._remote_relpaths(sample)
            key: tuple[int, LocalityKey | int | None]
            try:
                refs = [source.locate(folder, rel) for rel in relpaths or [sample["image"]]]
                key = (0, source.locality_of(refs[0]))
            except StorageError:
                key = (1, i)  # not in the index: alone (its read reports the error)
            else:
                for ref in refs if relpaths else ():
                    source.expect(ref)
            groups.setdefault(key, []).append(i)
        return [groups[key] for key in sorted(groups)]

    def _remote_relpaths(self, sample: Mapping[str, str]) -> list[str]:
        """The relpaths of ``sample`` that are read from ``ceph_folder``."""
        reads_pixels = (self.image_tokens_folder is None and self.latents_ceph_folder is None
                        and self.image_latents_folder is None)
        relpaths = [sample["image"]] if reads_pixels else []
        if not (self.inline_captions and "caption" in sample):
            relpaths.append(sample["annotation"])
        return relpaths

    def _prefetch_from(self, idx: int) -> None:
        """Start fetching sample ``idx`` and the ones this worker expects next
        (each sample's files in one ``read_many``: one request in shard mode)."""
        prefetcher, source, folder = self._prefetcher, self.sample_source, self.ceph_folder
        if prefetcher is None or folder is None or time.monotonic() < self._remote_down_until:
            return
        storage = self.storage  # made here, not raced for by the threads
        known, upcoming = prefetcher.plan_next(idx, len(self))
        # ``idx`` itself only when it was not planned before (first call, a jump, a resync): a
        # planned one was submitted then; if its fetch was dropped since, the read is synchronous.
        for j in upcoming if known else [idx, *upcoming]:
            try:
                refs = [source.locate(folder, rel) for rel in self._remote_relpaths(self.data_list[j])]
            except StorageError:
                continue  # e.g. not in the shard index: the synchronous read reports it
            if all(source.resident(r) for r in refs):  # block reads: members of held blocks need no thread
                continue
            prefetcher.submit([r.key for r in refs], functools.partial(source.read_many, storage, refs))

    def _fetch(self, source: SampleSource, folder: str, relpath: str, trace: list[str]) -> bytes:
        """Locate and read ``relpath`` (prefetched bytes first); ``trace[-1]`` becomes its label."""
        ref = source.locate(folder, relpath)
        trace[-1] = ref.label
        if self._prefetcher is not None and source is self.sample_source:
            # held blocks were not prefetched: not a miss
            data = self._prefetcher.take(ref.key, count_miss=not source.resident(ref))
            if data is not None:
                return data
        return source.read(self.storage, ref)

    def _read(self, remote_folder: str | None, local_folder: str | None, relpath: str,
              trace: list[str], source: SampleSource | None = None) -> bytes:
        """Bytes of ``relpath``: from ``remote_folder`` when set, through ``source``
        (default: one object per file), falling back to ``local_folder``; else
        from ``local_folder``."""
        if remote_folder is not None:
            if time.monotonic() < self._remote_down_until:
                local = self._local_copy(local_folder, relpath)
                if local is not None:
                    return self._read_fallback(local, trace)
            uri = join_uri(remote_folder, relpath)
            trace.append(uri)
            try:
                data = self._fetch(source or _OBJECTS, remote_folder, relpath, trace)
                self.read_counts["remote"] += 1
                self.read_bytes["remote"] += len(data)
                return data
            except StorageError as exc:
                local = self._local_copy(local_folder, relpath) if _should_fall_back(exc) else None
                if local is None:
                    if isinstance(exc, BucketNotFoundError):
                        self._raise_missing_bucket(exc, uri, remote_folder, local_folder, relpath)
                    raise
                if _store_unavailable(exc):
                    self._remote_down_until = time.monotonic() + self.fallback_cooldown
                self._note_fallback(uri, exc)
                return self._read_fallback(local, trace)
        if local_folder is None:
            raise ConfigError(f"{relpath}: neither a remote nor a local folder is configured for it")
        path = join_uri(local_folder, relpath)
        trace.append(path)
        data = self.storage.get(path)
        self.read_counts["local"] += 1
        return data

    def _raise_missing_bucket(self, exc: BucketNotFoundError, uri: str, remote_folder: str,
                              local_folder: str | None, relpath: str) -> None:
        """No sample of ``remote_folder`` can be read: one error naming the bucket and the option
        (not ``max_retries`` + 1 samples counted as "missing"). With a local copy configured the
        other files still come from it, so there this one file is a missing sample."""
        if self.local_fallback and local_folder is not None:
            raise ObjectNotFoundError(f"{uri}: bucket {parse_uri(uri).bucket!r} does not exist and there is no "
                                      f"local copy at {join_uri(local_folder, relpath)}") from exc
        option = "ceph_folder" if remote_folder == self.ceph_folder else "latents_ceph_folder"
        raise _missing_bucket(uri, option, remote_folder) from exc

    def _local_copy(self, local_folder: str | None, relpath: str) -> str | None:
        """The local file that may stand in for a remote one, if fallback is on and it exists."""
        if not self.local_fallback or local_folder is None:
            return None
        local = join_uri(local_folder, relpath)
        return local if not is_s3_uri(local) and os.path.isfile(local) else None

    def _read_fallback(self, local: str, trace: list[str]) -> bytes:
        trace.append(local)
        data = self.storage.get(local)
        self.read_counts["fallback_local"] += 1
        return data

    def _note_fallback(self, uri: str, exc: BaseException) -> None:
        self._check_process()
        if not self._fallback_logged:
            self._fallback_logged = True
            logger.warning("local fallback active in pid %d: %s failed (%s: %s); reading local copies "
                           "(count in read_counts['fallback_local']); store skipped for %.0fs when it is "
                           "down or unconfigured", os.getpid(), uri, type(exc).__name__, exc,
                           self.fallback_cooldown)

    def _load_tensor(self, remote: str | None, local: str | None, relpath: str,
                     trace: list[str]) -> Any:
        data = self._read(remote, local, relpath, trace)
        try:
            # weights_only: a .pt from a shared bucket must not run code when loaded.
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CorruptDataError(f"{trace[-1]}: cannot load tensor file ({type(exc).__name__}: {exc})") from exc

    # -- per-sample steps (overridable like OpenUni's) ---------------------
    def _read_visual(self, sample: Mapping[str, str], trace: list[str]) -> dict[str, Any]:
        """Image tokens, latents or pixels, in OpenUni's order of precedence."""
        image = sample["image"]
        if self.image_tokens_folder is not None:
            tokens = self._load_tensor(None, self.image_tokens_folder, image + ".pt", trace)
            return {"image_tokens": torch.as_tensor(tokens).long()}
        if self.latents_ceph_folder is not None or self.image_latents_folder is not None:
            return {"image_latents": self._load_tensor(self.latents_ceph_folder, self.image_latents_folder,
                                                       image + ".pt", trace)}
        data = self._read(self.ceph_folder, self.image_folder, image, trace, self.sample_source)
        pixels = load_pixel_values(data, trace[-1], image_size=self.image_size,
                                   min_image_size=self.min_image_size, max_aspect_ratio=self.max_aspect_ratio,
                                   crop=self.crop)
        return {"pixel_values": pixels}

    def _read_caption(self, sample: Mapping[str, str], trace: list[str]) -> str:
        """The caption: inline in data.json when ``tools/make_data_json.py --inline-captions``
        put it there (no request), else read from the annotation file."""
        if self.inline_captions and "caption" in sample:
            return clean_caption(sample["caption"], f"{self.data_path}: inline caption of {sample['image']!r}")
        data = self._read(self.ceph_folder, self.cap_folder, sample["annotation"], trace, self.sample_source)
        return clean_caption(self._parse_caption(data, trace[-1]), trace[-1])

    def _parse_caption(self, data: bytes, key: str) -> str:
        """``annotation[cap_source]`` of a JSON caption file."""
        try:
            annotation = loads_bounded(data.decode("utf-8-sig"))
        except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError, nested too deeply
            raise BadCaptionError(f"{key}: caption file is not valid UTF-8 JSON ({exc})") from None
        if not isinstance(annotation, dict) or self.cap_source not in annotation:
            raise BadCaptionError(f"{key}: caption JSON has no {self.cap_source!r} field (cap_source)")
        caption = annotation[self.cap_source]
        if not isinstance(caption, str):
            raise BadCaptionError(f"{key}: {self.cap_source!r} is a {type(caption).__name__}, not a string")
        return caption

    def _process_text(self, text: str) -> dict[str, torch.Tensor]:
        return {"input_ids": prompt_input_ids(text, self.tokenizer, unconditional_prob=self.unconditional,
                                              prompt_template=self.prompt_template, max_length=self.max_length,
                                              tokenizer_kwargs=self.tokenizer_kwargs)}

    def _load_sample(self, idx: int, trace: list[str]) -> dict[str, Any]:
        sample = self.data_list[idx]
        data = self._read_visual(sample, trace)
        caption = self._read_caption(sample, trace)
        data.update(self._process_text(caption))
        data.update(image_dir=self.ceph_folder if self.ceph_folder is not None else self.image_folder,
                    image_file=sample["image"], type="text2image")
        return data

    # -- retries ----------------------------------------------------------
    def _retry_index(self, origin: int, attempt: int, tried: Sequence[int]) -> int:
        """A replacement for ``origin`` after ``attempt`` failures: reproducible
        (seeded by retry_seed/origin/attempt, not by worker state) and, while
        possible, one not tried yet for this request."""
        rng = random.Random(f"{self.retry_seed}:{origin}:{attempt}")
        n = len(self)
        candidate = rng.randrange(n)
        for _ in range(16):
            if candidate not in tried:
                break
            candidate = rng.randrange(n)
        return candidate

    def _record_bad(self, idx: int, uri: str, reason: str, exc: BaseException, next_idx: int | None) -> None:
        image = self.data_list[idx].get("image", "?")
        self.bad_sample_counts[reason] += 1
        self.bad_samples_log.append(BadSample(idx, image, uri, reason, str(exc)))
        then = f"retrying with sample {next_idx}" if next_idx is not None else "no retries left"
        logger.warning("bad sample %s[%d] image=%s uri=%s reason=%s: %s; %s",
                       self.data_path, idx, image, uri, reason, exc, then)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        idx = 0 if self.debug else int(idx)
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f"sample index {idx} out of range for {n} samples")
        idx %= n
        if self._prefetcher is not None and not self.debug:
            self._prefetch_from(idx)
        current, tried, failures = idx, [], []
        for attempt in range(self.max_retries + 1):
            trace: list[str] = []
            try:
                return self._load_sample(current, trace)
            except Exception as exc:
                reason = classify_bad_sample(exc)
                if reason is None:
                    raise
                uri = trace[-1] if trace else "?"
                tried.append(current)
                failures.append((current, uri, reason))
                next_idx = self._retry_index(idx, attempt, tried) if attempt < self.max_retries else None
                self._record_bad(current, uri, reason, exc, next_idx)
                if next_idx is not None:
                    current = next_idx
        last = "; ".join(f"[{i}] {uri} ({reason})" for i, uri, reason in failures[-3:])
        raise SampleRetriesExhaustedError(
            f"{self.data_path}: sample {idx} and {len(failures) - 1} replacement(s) all failed "
            f"(max_retries={self.max_retries}); last: {last}. Counts so far: {dict(self.bad_sample_counts)}")


@BUILDER.register_module(force=True)
class BLIP3oDataset(CaptionDataset):
    """BLIP3o-60k: captions are plain ``.txt`` files (stripped). An
    annotation ending in ``.json`` is still read as ``[cap_source]``."""

    def _parse_caption(self, data: bytes, key: str) -> str:
        if key.endswith(".json"):
            return super()._parse_caption(data, key)
        try:
            return data.decode("utf-8-sig").strip()
        except UnicodeDecodeError as exc:
            raise BadCaptionError(f"{key}: caption is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


DATASETS.register_module(name="CaptionDataset", module=CaptionDataset, force=True)
DATASETS.register_module(name="BLIP3oDataset", module=BLIP3oDataset, force=True)

from blip3o_storage.training import collate as _collate  # noqa: E402,F401 - registers blip3o_collate with the datasets
from blip3o_storage.training import tokenizers as _tokenizers  # noqa: E402,F401 - registers ByteTokenizer


def build_dataset_from_config(path_or_cfg: str | os.PathLike | Mapping[str, Any],
                              key: str = "dataset", **overrides: Any) -> CaptionDataset:
    """Build the dataset of an mmengine config file (or Config/dict).

    ``key`` names the dataset dict (``'dataset'``, or
    ``'train_dataloader.dataset'``); ``overrides`` replace its keywords, e.g.
    ``data_path=...`` to point a shipped config at other data.
    """
    from mmengine.config import Config

    if isinstance(path_or_cfg, (str, os.PathLike)):
        cfg: Any = Config.fromfile(os.fspath(path_or_cfg))
    else:
        cfg = path_or_cfg
    node: Any = cfg
    for part in key.split("."):
        if part not in node:
            raise ConfigError(f"config has no {key!r} (missing {part!r})")
        node = node[part]
    spec = node.to_dict() if hasattr(node, "to_dict") else dict(node)
    spec.update(overrides)
    dataset = build_component(spec)
    if not isinstance(dataset, CaptionDataset):
        raise ConfigError(f"config {key!r} built a {type(dataset).__name__}, not a CaptionDataset or "
                          "BLIP3oDataset (this helper builds the datasets of this package)")
    return dataset


__all__ = ["BadCaptionError", "BadSample", "BLIP3oDataset", "CaptionDataset", "EmptyCaptionError",
           "SampleRetriesExhaustedError", "build_dataset_from_config", "classify_bad_sample", "clean_caption",
           "load_data_list"]
