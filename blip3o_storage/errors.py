"""One exception hierarchy for the whole package.

Every error derives from :class:`StorageError` and, where a built-in means the
same thing, from that built-in too, so callers can keep writing
``except FileNotFoundError`` or ``except PermissionError``.
Messages name the URI or file and what to do; they never contain secrets.
"""
from __future__ import annotations

import pickle
import shutil


class StorageError(Exception):
    """Base class of every error raised by blip3o_storage."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """The object or file does not exist (S3 404 / NoSuchKey / NoSuchBucket)."""


class BucketNotFoundError(ObjectNotFoundError):
    """The bucket itself does not exist (S3 NoSuchBucket)."""


class AccessDeniedError(StorageError, PermissionError):
    """Credentials were rejected or lack permission (S3 403)."""


class InvalidPathError(StorageError, ValueError):
    """A URI or relative path is malformed or escapes its folder."""


class ConfigError(StorageError, ValueError):
    """A ceph_config / petreloss.conf file or option is invalid."""


class TransientStorageError(StorageError, ConnectionError):
    """A retryable failure (503 SlowDown, 500, reset, truncated body) that
    persisted through every retry attempt."""


class CorruptDataError(StorageError):
    """Data was read but is not what it should be (bad image, hash mismatch)."""


# -- folder/file mismatches and copy targets (mmengine's fileio contract: the built-ins LocalBackend raises) --
class IsAFolderError(StorageError, IsADirectoryError):
    """A file operation (get, remove, copyfile) named a folder (an S3 prefix with objects under it)."""


class NotAFolderError(StorageError, NotADirectoryError):
    """A folder operation (list, rmtree, copytree) named a single file/object."""


class AlreadyExistsError(StorageError, FileExistsError):
    """The destination of a copytree already exists (copytree never merges into a folder)."""


class SameObjectError(StorageError, shutil.SameFileError):
    """A copy's source and destination are the same file/object."""


class UntrustedDataError(StorageError, pickle.UnpicklingError):
    """Data would need full unpickling (which can run code) and the source is not marked trusted."""
