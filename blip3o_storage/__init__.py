"""blip3o-storage: read BLIP3o-60k (and similar) training data from local disk
or any S3-compatible object store (Ceph RGW, MinIO, AWS S3) through boto3."""
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
from blip3o_storage.storage.backend import ObjectInfo, StorageBackend
from blip3o_storage.storage.config import S3Settings, StorageConfig, load_config, load_petreloss_conf
from blip3o_storage.storage.facade import Storage
from blip3o_storage.storage.uri import StorageURI, check_relpath, is_s3_uri, join_uri, parse_uri

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError", "BucketNotFoundError", "ConfigError", "CorruptDataError", "InvalidPathError",
    "ObjectInfo", "ObjectNotFoundError", "S3Settings", "Storage", "StorageBackend", "StorageConfig",
    "StorageError", "StorageURI", "TransientStorageError", "check_relpath", "is_s3_uri", "join_uri",
    "load_config", "load_petreloss_conf", "parse_uri",
]
