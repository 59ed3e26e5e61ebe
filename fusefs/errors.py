"""Filesystem errors: each class carries its errno; ``fuse_ops`` is the only place that uses it.

::

    FsError(Exception)  .errno .log_level
      NotFound          ENOENT
      NotADirectory     ENOTDIR
      IsADirectory      EISDIR
      ReadOnly          EROFS
      PermissionDenied  EACCES
      Stale             ESTALE   the object changed under an open handle
      Offline           ENETDOWN the provider is unreachable and the bytes are not cached
      RemoteError       EIO      anything else a provider reported (ProviderError kept as __cause__)
      TryAgain          EAGAIN   a rate-limited fetch is still pending; retry later
      NoAttribute       ENODATA
"""

from __future__ import annotations

import errno
import logging


class FsError(Exception):
    errno: int = errno.EIO
    log_level: int = logging.WARNING


class NotFound(FsError):
    errno = errno.ENOENT
    log_level = logging.DEBUG


class NotADirectory(FsError):
    errno = errno.ENOTDIR
    log_level = logging.DEBUG


class IsADirectory(FsError):
    errno = errno.EISDIR
    log_level = logging.DEBUG


class ReadOnly(FsError):
    errno = errno.EROFS
    log_level = logging.DEBUG


class PermissionDenied(FsError):
    errno = errno.EACCES
    log_level = logging.ERROR


class BadHandle(FsError):
    """A file or directory handle the kernel never got from us (or already released)."""

    errno = errno.EBADF
    log_level = logging.ERROR


class Stale(FsError):
    errno = errno.ESTALE


class Offline(FsError):
    errno = errno.ENETDOWN


class RemoteError(FsError):
    errno = errno.EIO
    log_level = logging.ERROR


class TryAgain(FsError):
    errno = errno.EAGAIN


class NoAttribute(FsError):
    errno = errno.ENODATA
    log_level = logging.DEBUG
