"""``-o`` options as config overrides: names, values, the options mount(8) adds, errors."""

from __future__ import annotations

import pytest

from fusefs import mountopts
from fusefs.mountopts import MountOptionError


def test_options_land_on_their_config_keys() -> None:
    got = mountopts.parse(
        ["allow_other,uid=1000,gid=1000", "file_mode=0444,dir_mode=0555,cache_max_size=20G"]
    )
    assert got == {
        "mount": {
            "allow_other": True,
            "uid": 1000,
            "gid": 1000,
            "file_mode": "0444",
            "dir_mode": "0555",
        },
        "cache": {"max_size": "20G"},
    }


def test_what_mount_and_systemd_add_is_ignored() -> None:
    opts = "ro,_netdev,nofail,noauto,x-systemd.requires=network-online.target,nosuid,nodev,dev"
    assert mountopts.parse([opts]) == {}
    assert mountopts.parse(["", ",,"]) == {}
    # mount(8) passes rw unless told ro, mount.fuse adds dev,suid: the mount is read-only anyway
    assert mountopts.parse(["rw,allow_other,dev,suid"]) == {"mount": {"allow_other": True}}


def test_numbers_and_flags_written_back() -> None:
    assert mountopts.parse(["dir_ttl=5", "dir_ttl=2.5"]) == {"mount": {"dir_ttl": 2.5}}
    assert mountopts.parse(["default_permissions=false"]) == {
        "mount": {"default_permissions": False}
    }
    assert mountopts.format_option("allow_other", True) == "allow_other"
    assert mountopts.format_option("default_permissions", False) == "default_permissions=false"
    assert mountopts.format_option("uid", 7) == "uid=7"
    with pytest.raises(MountOptionError, match="comma"):
        mountopts.format_option("log_file", "/a,b")


def test_sloppy_mounts_drop_only_the_unknown() -> None:
    texts = ["rw,bogus=1,uid=5", "comment=x,big_writes"]
    assert mountopts.unknown(texts) == ["bogus", "big_writes"]
    assert mountopts.without(texts[0], ["bogus"]) == "rw,uid=5"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("allow_others", ["unknown mount option: allow_others", "allow_other"]),
        ("uid=1000,bogus,big_writes", ["unknown mount options: bogus, big_writes"]),
        ("dir_ttl=soon", ["-o dir_ttl", "'soon' is not a number"]),
        ("uid=me", ["-o uid", "'me' is not a number"]),
        ("uid", ["-o uid needs a value"]),
        ("cache_dir=", ["-o cache_dir needs a value"]),
        ("allow_other=maybe", ["-o allow_other takes no value"]),
    ],
)
def test_bad_options_name_what_is_wrong(text: str, words: list[str]) -> None:
    with pytest.raises(MountOptionError) as exc:
        mountopts.parse([text])
    for w in words:
        assert w in str(exc.value)


def test_overlay_keeps_the_file_and_adds_tables() -> None:
    raw = {"mount": {"dir_ttl": 5}, "cache": {"dir": "/c"}, "iotda": {"url": "u"}}
    merged = mountopts.overlay(raw, {"mount": {"uid": 7}, "cache": {"max_size": "1G"}})
    assert merged == {
        "mount": {"dir_ttl": 5, "uid": 7},
        "cache": {"dir": "/c", "max_size": "1G"},
        "iotda": {"url": "u"},
    }
    assert raw["mount"] == {"dir_ttl": 5}
    assert mountopts.overlay({}, {"mount": {"allow_other": True}}) == {
        "mount": {"allow_other": True}
    }
