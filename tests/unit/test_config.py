"""The config loader: every error message says what to fix; secrets never leak."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fusefs.config import ConfigError, Secret
from fusefs.providers.registry import load_config, parse_config

ENV = {"KEY": "appkey-1", "SECRET": "s3cr3t-value", "TOK": "Bearer tok-xyz", "PW": "iam-pw-123"}

FULL = """
[mount]
request_timeout = 30
dir_ttl = 5.5
log_level = "DEBUG"
[cache]
dir = "~/cachedir"
block_size = "1MiB"
max_size = 1073741824
min_free_ratio = 0.1
memory_budget = "64 MiB"
[enos]
apigw_url = "https://apim.example.com/"
app_key_env = "KEY"
app_secret_env = "SECRET"
orgs = ["o1", "o2"]
[koodrive]
url = "https://kd.example.com"
token_env = "TOK"
containers = [{ id = "IAAD1", group_id = 1234 }, { id = "IAAD2" }]
[iam]
url = "https://iam.example.com"
user = "u"
domain = "d"
project = "cn-north-4"
password_env = "PW"
[iotda]
url = "https://iotda.example.com"
project_id = "p1"
[roma]
url = "https://roma.example.com"
project_id = "p2"
instances = [{ id = "i1", jobs = ["j1", "j2"] }]
"""


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    p = tmp_path / "fusefs.toml"
    p.write_text(text)
    p.chmod(mode)
    return p


def test_full_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL), ENV)
    assert cfg.mount.request_timeout == 30.0 and cfg.mount.dir_ttl == 5.5
    assert cfg.mount.log_level == "debug"
    assert cfg.cache.dir == Path("~/cachedir").expanduser()
    assert cfg.cache.block_size == 1 << 20 and cfg.cache.max_size == 1 << 30
    assert cfg.cache.memory_budget == 64 << 20
    assert cfg.enos is not None and cfg.enos.apigw_url == "https://apim.example.com"
    assert cfg.enos.integration_url == cfg.enos.apigw_url
    assert cfg.enos.app_key == "appkey-1" and cfg.enos.app_secret.reveal() == "s3cr3t-value"
    assert cfg.koodrive is not None and cfg.koodrive.auth == "token"
    assert [c.group_id for c in cfg.koodrive.containers] == ["1234", None]
    assert cfg.iotda is not None and cfg.iotda.resource_type == "BatchTask"
    assert cfg.iotda.download_interval == 30.0
    assert cfg.roma is not None and cfg.roma.instances[0].jobs == ("j1", "j2")


def test_defaults_when_mount_and_cache_absent(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            FULL.split("[enos]")[0].split("[mount]")[0]
            + "[enos]"
            + FULL.split("[enos]")[1].split("[koodrive]")[0],
        ),
        ENV,
    )
    assert cfg.mount.request_timeout == 60.0 and cfg.cache.block_size == 1 << 20
    assert cfg.koodrive is None and cfg.iotda is None


def test_secrets_never_in_repr_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = load_config(write(tmp_path, FULL, 0o644), ENV)
    text = repr(cfg) + str(cfg) + caplog.text
    for secret in ("s3cr3t-value", "tok-xyz", "iam-pw-123"):
        assert secret not in text
    assert "Secret(<hidden>" in repr(cfg)


def test_config_readable_by_others_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    load_config(write(tmp_path, FULL, 0o644), ENV)
    assert "readable by group/others" in caplog.text
    caplog.clear()
    load_config(write(tmp_path, FULL, 0o600), ENV)
    assert "readable" not in caplog.text


def test_secret_file_and_its_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sf = tmp_path / "secret"
    sf.write_text("from-file\n")
    sf.chmod(0o644)
    text = FULL.replace('app_secret_env = "SECRET"', f'app_secret_file = "{sf}"')
    cfg = load_config(write(tmp_path, text), ENV)
    assert cfg.enos is not None and cfg.enos.app_secret.reveal() == "from-file"
    assert "chmod 600" in caplog.text
    caplog.clear()
    sf.chmod(0o600)
    load_config(write(tmp_path, text), ENV)
    assert "chmod" not in caplog.text


def test_secret_repr() -> None:
    s = Secret("abc", "env X")
    assert "abc" not in repr(s) and "abc" not in str(s) and s.reveal() == "abc"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ('app_secret_env = "SECRET"', 'app_secret_env = "FUSEFS_ENOS_APP_SECRET"'),
            "set FUSEFS_ENOS_APP_SECRET or app_secret_file",
        ),
        (('app_secret_env = "SECRET"', ""), "app_secret: missing; add app_secret_env"),
        (
            ('app_secret_env = "SECRET"', 'app_secret = "x"'),
            "secrets are not written into the config",
        ),
        (("dir_ttl = 5.5", "dir_ttl = 0"), "[mount] dir_ttl: must be a number > 0"),
        (("dir_ttl = 5.5", 'dir_ttl = "5"'), "[mount] dir_ttl: must be a number, got a string"),
        (("dir_ttl = 5.5", "dir_tll = 5.5"), "[mount] unknown key 'dir_tll'"),
        (('log_level = "DEBUG"', 'log_level = "loud"'), "[mount] log_level: must be one of"),
        (
            ('block_size = "1MiB"', 'block_size = "1 MB-ish"'),
            "[cache] block_size: cannot read size",
        ),
        (('block_size = "1MiB"', "block_size = true"), "[cache] block_size: must be a size"),
        (
            ("min_free_ratio = 0.1", "min_free_ratio = 1.5"),
            "[cache] min_free_ratio: must be within",
        ),
        (
            ('apigw_url = "https://apim.example.com/"', 'apigw_url = "apim.example.com"'),
            "[enos] apigw_url: 'apim.example.com' is not an http(s) URL",
        ),
        (('orgs = ["o1", "o2"]', 'orgs = "o1"'), "[enos] orgs: must be a list"),
        (('orgs = ["o1", "o2"]', ""), "[enos] orgs: missing"),
        (("[iam]", "[iamx]"), "unknown section [iamx]"),
        (
            (
                'containers = [{ id = "IAAD1", group_id = 1234 }, { id = "IAAD2" }]',
                "containers = []",
            ),
            "[koodrive] containers: must be a non-empty list",
        ),
        (
            ('token_env = "TOK"', 'token_env = "TOK"\nauth = "oauth"'),
            '[koodrive] auth: must be "token" or "app"',
        ),
        (('token_env = "TOK"', 'token_env = "TOK"\nuser_id = "1"'), 'only used with auth = "app"'),
        (
            (
                'instances = [{ id = "i1", jobs = ["j1", "j2"] }]',
                'instances = [{ id = "i1", job = [] }]',
            ),
            "[roma] instances[0]: unknown key 'job'",
        ),
        (('app_key_env = "KEY"', 'app_key_env = "NOPE"'), "environment variable NOPE is not set"),
    ],
)
def test_error_messages(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in FULL
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, FULL.replace(old, new, 1)), ENV)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    for secret in ENV.values():
        assert secret not in str(info.value)


def test_missing_iam_section(tmp_path: Path) -> None:
    text = FULL.split("[iam]")[0] + "[iotda]" + FULL.split("[iotda]")[1]
    with pytest.raises(
        ConfigError, match=r"\[iotda\] needs IAM credentials: add an \[iam\] section"
    ):
        load_config(write(tmp_path, text), ENV)


def test_no_provider_and_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no provider configured"):
        load_config(write(tmp_path, "[mount]\ndir_ttl = 1\n"), ENV)
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[mount\n"), ENV)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.toml", ENV)


def test_koodrive_app_auth(tmp_path: Path) -> None:
    text = FULL.replace(
        'token_env = "TOK"',
        'auth = "app"\napp_id = "a1"\napp_secret_env = "SECRET"\nuser_id = "99"',
    )
    cfg = load_config(write(tmp_path, text), ENV)
    assert cfg.koodrive is not None and cfg.koodrive.auth == "app"
    assert cfg.koodrive.app_id == "a1" and cfg.koodrive.user_id == "99"
    assert cfg.koodrive.token is None


def test_http_section(tmp_path: Path) -> None:
    from fusefs.config import ConfigError
    from fusefs.providers.registry import parse_config

    base = {"koodrive": {"url": "https://k", "token_env": "T", "containers": ["c"]}}
    env = {"T": "secret"}
    cfg = parse_config(base, env, base=tmp_path)
    assert cfg.http.ca_bundle is None and cfg.http.proxy is None
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cfg = parse_config(
        {**base, "http": {"ca_bundle": "ca.pem", "proxy": "http://proxy:3128", "read_timeout": 5}},
        env,
        base=tmp_path,
    )
    assert cfg.http.ca_bundle == ca and cfg.http.proxy == "http://proxy:3128"
    assert cfg.http.read_timeout == 5.0
    for bad in ({"ca_bundle": "missing.pem"}, {"proxy": "socks5://x"}, {"read_timeout": 0}):
        with pytest.raises(ConfigError, match=r"\[http\]"):
            parse_config({**base, "http": bad}, env, base=tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({**base, "http": {"verify": False}}, env, base=tmp_path)


KOO = {"koodrive": {"url": "https://k", "token_env": "T", "containers": ["c"]}}


def parse(tmp_path: Path, **tables: dict[str, object]) -> object:
    from fusefs.providers.registry import parse_config

    return parse_config({**KOO, **tables}, {"T": "secret"}, base=tmp_path)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("20G", 20 << 30),
        ("20GiB", 20 << 30),
        ("20GB", 20 * 10**9),
        ("512k", 512 << 10),
        ("1.5T", int(1.5 * (1 << 40))),
        ("3 MB", 3 * 10**6),
        ("100", 100),
        ("7B", 7),
    ],
)
def test_sizes_as_the_peers_write_them(tmp_path: Path, text: str, size: int) -> None:
    cfg = parse(tmp_path, cache={"max_size": text, "block_size": 1})
    assert cfg.cache.max_size == size  # type: ignore[attr-defined]


def test_mount_access_keys(tmp_path: Path) -> None:
    cfg = parse(tmp_path)
    m = cfg.mount  # type: ignore[attr-defined]
    assert (m.allow_other, m.default_permissions, m.uid, m.gid) == (False, None, None, None)
    assert (m.file_mode, m.dir_mode, m.log_file) == (0o444, 0o555, None)
    cfg = parse(
        tmp_path,
        mount={
            "allow_other": True,
            "default_permissions": False,
            "uid": 1000,
            "gid": 0,
            "file_mode": "0440",
            "dir_mode": 0o550,
            "log_file": "logs/m.log",
        },
    )
    m = cfg.mount  # type: ignore[attr-defined]
    assert (m.allow_other, m.default_permissions, m.uid, m.gid) == (True, False, 1000, 0)
    assert (m.file_mode, m.dir_mode, m.log_file) == (0o440, 0o550, tmp_path / "logs/m.log")


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        ({"uid": -1}, "[mount] uid: must be an id >= 0"),
        ({"gid": "1000"}, "[mount] gid: must be a numeric id"),
        ({"file_mode": "rw-r--r--"}, '[mount] file_mode: must be octal digits like "0444"'),
        ({"file_mode": 444}, "write bits"),  # decimal 444 = 0o674
        ({"dir_mode": "0755"}, "[mount] dir_mode: '0755' is mode 0755, with write bits"),
        ({"dir_mode": 0o4555}, "is not a permission mode"),
        ({"allow_other": "yes"}, "[mount] allow_other: must be true or false"),
        ({"log_file": ""}, "[mount] log_file: must not be empty"),
    ],
)
def test_mount_access_errors(tmp_path: Path, mount: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, mount=mount)
    assert message in str(info.value)


def test_metrics_address(tmp_path: Path) -> None:
    assert parse(tmp_path).metrics.address is None  # type: ignore[attr-defined]
    cfg = parse(tmp_path, metrics={"address": "127.0.0.1:9464"})
    assert cfg.metrics.address == ("127.0.0.1", 9464)  # type: ignore[attr-defined]
    cfg = parse(tmp_path, metrics={"address": "[::1]:9000"})
    assert cfg.metrics.address == ("::1", 9000)  # type: ignore[attr-defined]
    for bad in ("9464", "host:", "host:99999", "::1:9000", ":9464"):
        with pytest.raises(ConfigError, match=r"\[metrics\] address: "):
            parse(tmp_path, metrics={"address": bad})
    with pytest.raises(ConfigError, match="unknown key 'port'"):
        parse(tmp_path, metrics={"port": 1})


def test_overrides_go_through_the_same_checks(tmp_path: Path) -> None:
    from fusefs import mountopts

    path = write(
        tmp_path,
        "[cache]\nmax_size = 1024\nblock_size = 1\n"
        + FULL.split("[cache]")[0]
        + "[koodrive]"
        + FULL.split("[koodrive]")[1].split("[iam]")[0],
    )
    opts = mountopts.parse(["allow_other,uid=1000,cache_max_size=20G,file_mode=0400,dir_ttl=5"])
    cfg = load_config(path, ENV, overrides=opts)
    assert cfg.mount.allow_other and cfg.mount.uid == 1000 and cfg.mount.file_mode == 0o400
    assert cfg.cache.max_size == 20 << 30 and cfg.mount.dir_ttl == 5.0
    with pytest.raises(ConfigError, match=r"\[cache\] max_size: cannot read size '20 gigs'"):
        load_config(path, ENV, overrides=mountopts.parse(["cache_max_size=20 gigs"]))


def test_fleet_section(tmp_path: Path) -> None:
    base = {
        "koodrive": {"url": "https://k", "auth": "token", "token_env": "T", "containers": ["c"]}
    }
    env = {"T": "t", "RP": "redis-secret"}
    cfg = parse_config(
        {**base, "fleet": {"url": "redis://10.0.0.5:6379/2", "password_env": "RP"}},
        env,
        base=tmp_path,
    )
    assert cfg.fleet is not None and cfg.fleet.url == "redis://10.0.0.5:6379/2"
    assert cfg.fleet.password is not None and cfg.fleet.password.reveal() == "redis-secret"
    assert "redis-secret" not in repr(cfg.fleet)
    assert parse_config(base, env, base=tmp_path).fleet is None  # absent: one host
    for bad, words in (
        ({"url": "http://r:6379"}, "redis://"),
        ({"url": "redis://u:pw@r:6379"}, "must not carry credentials"),
        ({"url": "redis://r", "password": "x"}, "secrets are not written"),
        ({"url": "redis://r", "key_prefix": "a b"}, "key_prefix"),
        ({"url": "redis://r", "lease_sconds": 3}, "lease_sconds"),
        ({}, "url"),
    ):
        with pytest.raises(ConfigError, match=words):
            parse_config({**base, "fleet": bad}, env, base=tmp_path)
