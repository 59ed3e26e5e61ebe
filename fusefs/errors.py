"""Filesystem errors, and the one conversion of a failure into its errno (``fs_error_for``).

::

    FsError(Exception)  .errno .log_level
      NotFound          ENOENT
      NotADirectory     ENOTDIR
      IsADirectory      EISDIR
      ReadOnly          EROFS
      PermissionDenied  EACCES
      BadHandle         EBADF    a file or directory handle we never gave out (or released)
      Stale             ESTALE   the object changed under an open handle
      Offline           ENETDOWN the provider is unreachable and the bytes are not cached
      RemoteError       EIO      anything else a provider reported (ProviderError kept as __cause__)
      TryAgain          EAGAIN   a rate-limited fetch is still pending; retry later
      NoAttribute       ENODATA

The vfs raises an ``FsError`` for what it decides itself (a name not listed, a handle not known,
an object that changed while open) and lets a provider's failure pass up unconverted, with what
it was doing: ``raise During(f"listing {path}") from exc`` (Go's ``fmt.Errorf("...: %w")``).
The boundaries — the FUSE adapter's ``errno_boundary`` and the control socket — turn whatever
reaches them into an ``FsError`` with ``fs_error_for`` (gcsfuse's ``errno()``): the ProviderError
-> errno table is written once, below.
"""

from __future__ import annotations

import errno
import logging
from typing import overload

from fusefs.providers.base import (
    AuthError,
    ObjectNotFound,
    OneShotConsumed,
    ProviderError,
    Unavailable,
    VersionMismatch,
)


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


class During(Exception):
    """A provider's failure (``__cause__``) and what the filesystem was doing when it came:
    ``raise During(f"downloading {path}") from exc``. It has no errno of its own: the boundary's
    ``fs_error_for`` gives it its cause's."""

    def __str__(self) -> str:
        what = super().__str__()
        return f"{what}: {self.__cause__}" if self.__cause__ is not None else what


# the ProviderError classes -> FsError, most specific first (TransientError and the rest: EIO)
_PROVIDER_ERRORS: tuple[tuple[type[ProviderError], type[FsError], str], ...] = (
    (ObjectNotFound, NotFound, ""),
    (AuthError, PermissionDenied, ""),
    (VersionMismatch, Stale, ""),
    (Unavailable, Offline, ""),
    (OneShotConsumed, RemoteError, " (the archive can no longer be fetched)"),
)


@overload
def fs_error_for(exc: FsError | ProviderError | During) -> FsError: ...
@overload
def fs_error_for(exc: BaseException) -> FsError | None: ...
def fs_error_for(exc: BaseException) -> FsError | None:
    """The filesystem error (and so the errno) of a failure: an FsError is itself, a
    ProviderError goes by its class, a ``During`` by its cause's, with what was being done in
    front of the message. None: not a filesystem failure but a bug (the caller logs its
    traceback and answers EIO)."""
    if isinstance(exc, FsError):
        return exc
    what = ""
    if isinstance(exc, During):
        what = f"{Exception.__str__(exc)}: "
        cause = exc.__cause__
        if not isinstance(cause, ProviderError):  # not what During is for: still a failure
            err: FsError = RemoteError(str(exc))
            err.__cause__ = cause
            return err
        exc = cause
    if not isinstance(exc, ProviderError):
        return None
    for provider_class, fs_class, note in _PROVIDER_ERRORS:
        if isinstance(exc, provider_class):
            err = fs_class(f"{what}{exc}{note}")
            break
    else:
        err = RemoteError(f"{what}{exc}")
    err.__cause__ = exc
    return err
