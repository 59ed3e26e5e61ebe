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


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("allow_others", ["unknown mount option: allow_others", "allow_other"]),
        ("uid=1000,bogus,big_writes", ["unknown mount options: bogus, big_writes"]),
        ("rw", ["read-only"]),
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
