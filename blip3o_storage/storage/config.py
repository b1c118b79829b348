"""Connection settings: petreloss.conf-style INI files and the boto3 chain.

A ``ceph_config`` is what OpenUni passes next to ``ceph_folder``. It may be

* a path to a petreloss.conf-style INI file::

      [DEFAULT]
      default_cluster = cluster1

      [cluster1]
      access_key = ...
      secret_key = ...
      host_base = http://10.0.0.1:7480

  plus optional per-cluster keys of ours: ``region``, ``addressing_style``,
  ``verify_ssl``, ``ca_bundle``, ``max_pool_connections``, ``retry_mode``,
  ``max_attempts``, ``connect_timeout``, ``read_timeout``, ``deadline``, ``profile``,
  ``fast_path`` (object GET/PUT over storage/http1.py, signed by storage/sigv4.py; default on for path-style endpoints),
  and for large objects ``multipart_threshold``, ``multipart_chunksize`` (bytes, or sizes like
  ``64MB``/``16MiB``, binary as in the AWS CLI) and ``max_concurrency``.
  The closed petrel client's own keys (``enable_mc``, ``boto``, the log and
  memcached settings, see :data:`PETREL_CLIENT_KEYS`) and its non-cluster
  sections (``[mc]``, ``[dfs]``, ``[cache]``) are accepted and ignored, with one
  debug line; any other key is an error that suggests the nearest known one;
* a dict with the same keys (an mmengine config), one level per cluster or flat.
  A dict holding ``secret_key`` travels in pickles (DataLoader workers) and in
  mmengine's dumped config: it works, with one warning per process;
* ``None``: the standard boto3 chain (``AWS_*`` variables, profiles) with the
  endpoint from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` / ``S3_ENDPOINT_URL``,
  or a file named by ``BLIP3O_CEPH_CONFIG``.

Secrets are kept out of ``repr`` and error messages.
"""
from __future__ import annotations

import configparser
import difflib
import logging
import math
import os
import threading
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, Mapping, Optional, Sequence, Union
from urllib.parse import urlparse

from blip3o_storage.errors import ConfigError
from blip3o_storage.storage.part_sizing import MAX_PART_SIZE, MAX_SINGLE_PUT, MIN_PART_SIZE, MiB, parse_size

logger = logging.getLogger(__name__)

DEFAULT_CLUSTER_NAME = "default"
CONFIG_ENV_VAR = "BLIP3O_CEPH_CONFIG"
_ENDPOINT_ENV_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# Keys of the closed petrel client's petreloss.conf (its defaults table and sample file): they
# configure its memcached layer, its logging, its C++/librgw transports and its retry loop, none
# of which exist over boto3. Accepted and ignored so its files load unchanged.
PETREL_CLIENT_KEYS = frozenset({
    "enable_mc", "debug_mc", "mc_key_cb", "mc_server_list_path", "mc_client_config_path",
    "enable_cache", "cache_type", "boto", "fake", "debug", "log_file_debug",
    "console_log_level", "file_log_level", "log_file_path", "file_log_max_bytes", "file_log_backup_count",
    "count_disp", "enable_mem_trace", "get_retry_max", "s3_cpp_log_level", "enable_multipart",
    "cpp_multipart_threads", "cpp_multipart_chunk_size", "address_style",
})
# Sections of the closed client that are not clusters (it skips them case-insensitively too).
PETREL_CLIENT_SECTIONS = frozenset({"mc", "dfs", "cache"})
_IGNORED_PETREL_KEYS = PETREL_CLIENT_KEYS | {"default_cluster"}
_SECRET_KEYS = ("secret_key", "aws_secret_access_key", "session_token", "aws_session_token")
_FLOAT_KEYS = ("connect_timeout", "read_timeout", "deadline")  # seconds, > 0 and finite
_DICT_SECRET_WARNED = False
_DICT_SECRET_LOCK = threading.Lock()


@dataclass(frozen=True)
class S3Settings:
    """Everything needed to build a boto3 S3 client for one cluster."""

    endpoint_url: Optional[str] = None
    access_key: Optional[str] = field(default=None, repr=False)
    secret_key: Optional[str] = field(default=None, repr=False)
    session_token: Optional[str] = field(default=None, repr=False)
    profile: Optional[str] = None
    region: Optional[str] = None
    addressing_style: Optional[str] = None  # path | virtual | auto; None -> path off AWS
    verify_ssl: bool = True
    ca_bundle: Optional[str] = None
    max_pool_connections: int = 64
    retry_mode: str = "standard"
    max_attempts: int = 5
    connect_timeout: float = 10.0
    #: Seconds a socket waits for the next bytes (not for the whole transfer). A healthy RGW answers a
    #: 70 KB GET in ~5 ms and a 64 MB part PUT in ~1 s, so 10 s only ever fires on a stalled store.
    read_timeout: float = 10.0
    fast_path: Optional[bool] = None  # None -> on for path-style endpoints (see use_fast_path)
    #: Seconds after which an operation starts no new attempt (ours or botocore's): a store that
    #: accepts and never answers fails in ~``deadline`` s (31 s measured for get/stat/put; the attempt
    #: running at the deadline still ends at its socket timeouts, so at most deadline + connect_timeout
    #: + read_timeout), instead of 300 s (read) to 25 min (upload). 30 s lets three 10 s attempts run
    #: (one dead connection or RGW thread is passed by the next).
    deadline: float = 30.0
    #: Objects above this many bytes go as a multipart upload (parallel parts) and come back as
    #: parallel ranged GETs; at or below it, one PUT/GET. 64 MiB, as ``tools/upload.py`` uses: one
    #: PUT of 64 MiB takes ~0.3 s on RGW, so below it parallel parts buy little.
    multipart_threshold: int = 64 * MiB
    #: Part size of multipart uploads and ranged downloads (raised by s3transfer's ChunksizeAdjuster
    #: so no object needs more than 10,000 parts; at least S3's 5 MiB). Memory of one streaming
    #: transfer is about part size x (max_concurrency + 1): 144 MiB at the defaults.
    multipart_chunksize: int = 16 * MiB
    #: Parts in flight per transfer (threads per backend and process).
    max_concurrency: int = 8

    def __post_init__(self) -> None:
        if (self.access_key is None) != (self.secret_key is None):
            raise ConfigError("access_key and secret_key must be given together")
        if self.addressing_style not in (None, "path", "virtual", "auto"):
            raise ConfigError(f"addressing_style must be path, virtual or auto, not {self.addressing_style!r}")
        if self.retry_mode not in ("legacy", "standard", "adaptive"):
            raise ConfigError(f"retry_mode must be legacy, standard or adaptive, not {self.retry_mode!r}")
        if self.max_attempts < 1 or self.max_pool_connections < 1:
            raise ConfigError("max_attempts and max_pool_connections must be >= 1")
        for name in _FLOAT_KEYS:  # botocore would only refuse them per request
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
        if not isinstance(self.max_concurrency, int) or self.max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be an integer >= 1, not {self.max_concurrency!r}")
        if not isinstance(self.multipart_chunksize, int) or not (
                MIN_PART_SIZE <= self.multipart_chunksize <= MAX_PART_SIZE):
            raise ConfigError(f"multipart_chunksize must be from 5 MiB ({MIN_PART_SIZE}) to 5 GiB ({MAX_PART_SIZE}) "
                              f"bytes (S3's part size limits), not {self.multipart_chunksize!r}")
        if not isinstance(self.multipart_threshold, int) or not 1 <= self.multipart_threshold <= MAX_SINGLE_PUT:
            raise ConfigError(f"multipart_threshold must be from 1 to 5 GiB ({MAX_SINGLE_PUT}) bytes "
                              f"(S3's single-PUT limit), not {self.multipart_threshold!r}")
        if self.endpoint_url is not None:
            try:
                parsed = urlparse(self.endpoint_url)
                parsed.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError:
                parsed = None
            if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ConfigError(f"endpoint {self.endpoint_url!r} is not an http(s) URL")

    @property
    def is_aws(self) -> bool:
        """True when talking to AWS itself (no endpoint, or an amazonaws.com one)."""
        if not self.endpoint_url:
            return True
        host = urlparse(self.endpoint_url).hostname or ""
        return host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn")

    @property
    def effective_addressing_style(self) -> str:
        """Path-style for Ceph/MinIO (bucket DNS names rarely resolve there)."""
        if self.addressing_style:
            return self.addressing_style
        return "auto" if self.is_aws else "path"

    @property
    def use_fast_path(self) -> bool:
        """GET/PUT of objects through :mod:`blip3o_storage.storage.signed_http` (path-style endpoints only)."""
        if self.fast_path is False or not self.endpoint_url:
            return False
        return self.effective_addressing_style == "path"

    @property
    def transfer_concurrency(self) -> int:
        """Parts in flight per transfer: ``max_concurrency``, but never more than the connection
        pool holds (more threads than connections would make urllib3 discard connections)."""
        return min(self.max_concurrency, self.max_pool_connections)

    @property
    def verify(self) -> Union[bool, str]:
        """The ``verify`` argument for boto3: False, a CA bundle path, or True."""
        if not self.verify_ssl:
            return False
        return self.ca_bundle or True

    def describe(self) -> str:
        """A log-safe one-line description (no secrets)."""
        creds = "static keys" if self.access_key else (f"profile {self.profile}" if self.profile else "boto3 chain")
        return f"endpoint={self.endpoint_url or 'AWS'} credentials={creds} addressing={self.effective_addressing_style}"


@dataclass(frozen=True)
class StorageConfig:
    """Settings per cluster name, plus which cluster ``s3://`` means."""

    clusters: Mapping[str, S3Settings]
    default_cluster: str = DEFAULT_CLUSTER_NAME
    source: str = "<defaults>"

    def settings_for(self, cluster: Optional[str]) -> S3Settings:
        name = cluster or self.default_cluster
        try:
            return self.clusters[name]
        except KeyError:
            known = ", ".join(sorted(self.clusters)) or "none"
            raise ConfigError(
                f"unknown cluster {name!r} in {self.source}; known clusters: {known}. "
                f"Add a [{name}] section or use s3://bucket/key for the default cluster") from None


_INT_KEYS = {"max_pool_connections", "max_attempts", "max_concurrency"}
_SIZE_KEYS = {"multipart_threshold", "multipart_chunksize"}  # bytes, or "64MB" / "16MiB"

_SETTING_KEYS = {f.name for f in fields(S3Settings)}
_ALIASES = {"host_base": "endpoint_url", "endpoint": "endpoint_url", "region_name": "region",
            "aws_access_key_id": "access_key", "aws_secret_access_key": "secret_key",
            "aws_session_token": "session_token", "verify": "verify_ssl"}


def _normalise_endpoint(value: str, *, where: str) -> str:
    value = value.strip()
    if not value:
        raise ConfigError(f"{where}: empty host_base/endpoint_url")
    if "://" not in value:
        value = "http://" + value  # petreloss.conf often has a bare host:port
    return value.rstrip("/")


def _parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(name)


def _unknown_option(raw_key: str, where: str) -> ConfigError:
    """The error for a key that is neither ours nor the closed client's, with the nearest known key."""
    ours = sorted(_SETTING_KEYS | set(_ALIASES))
    close = difflib.get_close_matches(raw_key, ours + sorted(_IGNORED_PETREL_KEYS), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(f"{where}: unknown option {raw_key!r}; {hint}known options: {', '.join(ours)}")


def settings_from_mapping(values: Mapping[str, Any], *, where: str,
                          ignored: Optional[set] = None) -> S3Settings:
    """Build S3Settings from a mapping of (possibly aliased, string) values.

    Keys of the closed client are skipped (added to ``ignored`` when given, for one
    debug line per file); unknown keys raise ConfigError naming ``where``.
    """
    kwargs: Dict[str, Any] = {}
    for raw_key, raw_value in values.items():
        key = _ALIASES.get(raw_key, raw_key)
        if key in _IGNORED_PETREL_KEYS:
            if ignored is not None and key != "default_cluster":
                ignored.add(key)
            continue
        if key not in _SETTING_KEYS:
            raise _unknown_option(raw_key, where)
        value = raw_value
        try:
            if key in _INT_KEYS:
                value = int(value)
            elif key in _SIZE_KEYS:
                value = parse_size(value)
            elif key in _FLOAT_KEYS:
                value = float(value)
            elif key == "fast_path":
                value = _parse_bool(value, raw_key)
            elif key == "verify_ssl":
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low in _TRUE:
                        value = True
                    elif low in _FALSE:
                        value = False
                    else:  # a path given as verify= is a CA bundle
                        kwargs["ca_bundle"] = value
                        value = True
                value = bool(value)
            elif key == "endpoint_url" and value is not None:
                value = _normalise_endpoint(str(value), where=where)
            elif key == "ca_bundle" and value:
                value = os.path.expanduser(str(value))
                if not os.path.isfile(value):
                    raise ConfigError(f"{where}: ca_bundle {value!r} does not exist")
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{where}: option {raw_key!r} has invalid value {raw_value!r}") from None
        kwargs[key] = value
    try:
        return S3Settings(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_petreloss_conf(path: Union[str, os.PathLike]) -> StorageConfig:
    """Read a petreloss.conf-style INI file."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise ConfigError(f"ceph_config {path!r} does not exist; pass a petreloss.conf-style file or None")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh)
    except (configparser.Error, UnicodeDecodeError) as exc:
        # configparser errors may quote lines; keep only the kind of error and line number.
        line = getattr(exc, "lineno", None)
        raise ConfigError(
            f"ceph_config {path!r} is not a valid INI file ({type(exc).__name__}"
            f"{f' at line {line}' if line else ''}); expected [DEFAULT] default_cluster and [cluster] sections"
        ) from None
    inherited = set(parser.defaults())
    skipped = [name for name in parser.sections()
               if _closed_client_section(name, set(parser.options(name)) - inherited)]
    sections = [name for name in parser.sections() if name not in skipped]
    if not sections:
        raise ConfigError(f"ceph_config {path!r} has no [cluster] section with access_key/secret_key/host_base")
    default = parser.defaults().get("default_cluster") or (sections[0] if len(sections) == 1 else None)
    if default is None:
        raise ConfigError(f"ceph_config {path!r}: several clusters but no 'default_cluster' in [DEFAULT]")
    if default not in sections:
        raise ConfigError(f"ceph_config {path!r}: default_cluster {default!r} has no [{default}] section")
    ignored: set = set()
    # configparser copies [DEFAULT] into every section: check it once, so a typo there is
    # reported against [DEFAULT] (not against whichever cluster comes first).
    for raw_key in parser.defaults():
        if _ALIASES.get(raw_key, raw_key) not in _SETTING_KEYS | _IGNORED_PETREL_KEYS:
            raise _unknown_option(raw_key, f"{path} [DEFAULT]")
    clusters = {name: settings_from_mapping(dict(parser.items(name)), where=f"{path} [{name}]", ignored=ignored)
                for name in sections}
    for name in skipped:
        ignored |= set(parser.options(name)) & PETREL_CLIENT_KEYS
    _log_ignored(path, ignored, skipped)
    return StorageConfig(clusters=clusters, default_cluster=default, source=path)


def _closed_client_section(name: str, own_keys: set) -> bool:
    """True for the closed client's own non-cluster sections (``[mc]``, ``[dfs]``, ``[cache]``, any case).

    A section so named that sets a connection key of ours (``host_base``, ``access_key``, ...) is a
    cluster that happens to be called that, and is kept.
    """
    return name.lower() in PETREL_CLIENT_SECTIONS and not any(
        _ALIASES.get(key, key) in _SETTING_KEYS for key in own_keys)


def _log_ignored(source: str, keys: set, sections: Sequence[str] = ()) -> None:
    """One debug line per config for what the closed client would have used and we do not."""
    if keys or sections:
        logger.debug("%s: ignoring the closed petrel client's own settings (no meaning over boto3): keys %s%s",
                     source, ", ".join(sorted(keys)) or "none",
                     f"; sections {', '.join(f'[{name}]' for name in sections)}" if sections else "")


def _warn_dict_secret(values: Mapping[str, Any]) -> None:
    """Warn once per process when a dict ceph_config carries a secret (never the secret itself)."""
    global _DICT_SECRET_WARNED
    held = sorted({k for k in _SECRET_KEYS if k in values}
                  | {k for sub in values.values() if isinstance(sub, Mapping) for k in _SECRET_KEYS if k in sub})
    if not held:
        return
    with _DICT_SECRET_LOCK:
        if _DICT_SECRET_WARNED:
            return
        _DICT_SECRET_WARNED = True
    logger.warning("ceph_config is a dict holding %s: it is copied into every pickle sent to DataLoader workers "
                   "and into mmengine's dumped config and log. Put the keys in a petreloss.conf file "
                   "(ceph_config='petreloss.conf' or %s=path) or in the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                   "environment variables (ceph_config=None)", " and ".join(held), CONFIG_ENV_VAR)


def _config_from_dict(values: Mapping[str, Any]) -> StorageConfig:
    _warn_dict_secret(values)
    ignored: set = set()
    skipped = [k for k, v in values.items() if isinstance(v, Mapping) and _closed_client_section(k, set(v))]
    nested = {k: v for k, v in values.items() if isinstance(v, Mapping) and k not in skipped}
    if nested:
        flat = {k: v for k, v in values.items() if not isinstance(v, Mapping) and k != "default_cluster"}
        clusters = {name: settings_from_mapping({**flat, **sub}, where=f"ceph_config[{name!r}]", ignored=ignored)
                    for name, sub in nested.items()}
        default = values.get("default_cluster") or next(iter(clusters))
        if default not in clusters:
            raise ConfigError(f"ceph_config dict: default_cluster {default!r} is not one of {sorted(clusters)}")
        _log_ignored("ceph_config dict", ignored, skipped)
        return StorageConfig(clusters=clusters, default_cluster=default, source="ceph_config dict")
    flat = {k: v for k, v in values.items() if k != "default_cluster" and k not in skipped}
    settings = settings_from_mapping(flat, where="ceph_config dict", ignored=ignored)
    _log_ignored("ceph_config dict", ignored, skipped)
    return StorageConfig(clusters={DEFAULT_CLUSTER_NAME: settings}, source="ceph_config dict")


def config_from_environment() -> StorageConfig:
    """The boto3 chain: credentials resolved by boto3 itself, endpoint from env."""
    env_file = os.environ.get(CONFIG_ENV_VAR)
    if env_file:
        return load_petreloss_conf(env_file)
    endpoint = next((os.environ[v] for v in _ENDPOINT_ENV_VARS if os.environ.get(v)), None)
    values: Dict[str, Any] = {}
    if endpoint:
        values["endpoint_url"] = endpoint
    if os.environ.get("AWS_CA_BUNDLE"):
        values["ca_bundle"] = os.environ["AWS_CA_BUNDLE"]
    settings = settings_from_mapping(values, where="environment")
    return StorageConfig(clusters={DEFAULT_CLUSTER_NAME: settings}, source="environment (boto3 chain)")


def load_config(ceph_config: Union[None, str, os.PathLike, Mapping[str, Any], StorageConfig, S3Settings] = None,
                **overrides: Any) -> StorageConfig:
    """Resolve any accepted ``ceph_config`` form into a StorageConfig.

    ``overrides`` (e.g. ``endpoint_url=...``) apply to every cluster.
    """
    if isinstance(ceph_config, StorageConfig):
        config = ceph_config
    elif isinstance(ceph_config, S3Settings):
        config = StorageConfig(clusters={DEFAULT_CLUSTER_NAME: ceph_config}, source="S3Settings")
    elif ceph_config is None:
        config = config_from_environment()
    elif isinstance(ceph_config, Mapping):
        config = _config_from_dict(ceph_config)
    elif isinstance(ceph_config, (str, os.PathLike)):
        config = load_petreloss_conf(ceph_config)
    else:
        raise ConfigError(f"ceph_config must be a path, dict or None, not {type(ceph_config).__name__}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        merged = settings_from_mapping(overrides, where="overrides")
        keys = {_ALIASES.get(k, k) for k in overrides}
        clusters = {name: replace(settings, **{k: getattr(merged, k) for k in keys})
                    for name, settings in config.clusters.items()}
        config = replace(config, clusters=clusters)
    return config
