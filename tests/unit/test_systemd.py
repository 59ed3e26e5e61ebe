"""The systemd unit: names as systemd-escape writes them, the lines a notify service needs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fusefs import systemd


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/mnt/clouds", "mnt-clouds"),
        ("/", "-"),
        ("/srv/iot data/.x", "srv-iot\\x20data-.x"),
        ("/.hidden/a-b", "\\x2ehidden-a\\x2db"),
        ("/mnt/ü", "mnt-\\xc3\\xbc"),
    ],
)
def test_escape_path_matches_systemd(path: str, name: str) -> None:
    assert systemd.escape_path(Path(path)) == name
    tool = shutil.which("systemd-escape")
    if tool:  # the reference, where installed
        out = subprocess.run([tool, "--path", path], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == name


def test_unit_is_a_notify_service_with_secrets_outside() -> None:
    text = systemd.unit_text(
        executable=Path("/opt/fusefs/bin/fusefs"),
        config=Path("/etc/fusefs/config.toml"),
        mountpoint=Path("/mnt/iot data"),
        env_file=Path("/etc/fusefs/fusefs.env"),
        fusermount="/bin/fusermount3",
    )
    lines = text.splitlines()
    for want in (
        "Type=notify",
        "Restart=on-failure",
        "EnvironmentFile=-/etc/fusefs/fusefs.env",
        "ExecStartPre=-/bin/fusermount3 -uz '/mnt/iot data'",
        "ExecStart=/opt/fusefs/bin/fusefs mount --foreground --config /etc/fusefs/config.toml"
        " '/mnt/iot data'",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WantedBy=multi-user.target",
    ):
        assert want in lines, want
    assert systemd.unit_name(Path("/mnt/iot data")) == "fusefs-mnt-iot\\x20data.service"
