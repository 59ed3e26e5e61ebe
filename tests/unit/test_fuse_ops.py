"""FuseOperations driven without a mount (as s3ql's t3_fs_api does): the adapter's answers to
requests the kernel could send, errnos included."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pyfuse3
import pytest

from fusefs.fuse_ops import FuseOperations
from tests.unit.test_tree import ListingProvider, make_tree


def ops(tmp_path: Path) -> FuseOperations:
    tree = make_tree(tmp_path, ListingProvider(), [0.0])
    return FuseOperations(tree, tree.cache, request_timeout=5)


async def test_unknown_file_handle_is_ebadf(tmp_path: Path) -> None:
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await ops(tmp_path).read(12345, 0, 4096)
    assert exc.value.errno == errno.EBADF


async def test_unknown_directory_handle_is_ebadf(tmp_path: Path) -> None:
    token: Any = None  # never reached: the handle is looked up first
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await ops(tmp_path).readdir(12345, 0, token)
    assert exc.value.errno == errno.EBADF


async def test_releasing_an_unknown_handle_is_harmless(tmp_path: Path) -> None:
    o = ops(tmp_path)
    await o.release(12345)
    await o.releasedir(12345)
    with pytest.raises(pyfuse3.FUSEError) as exc:  # and it stays unknown
        await o.read(12345, 0, 1)
    assert exc.value.errno == errno.EBADF
