"""docs/providers/*.md, checked against the code: every ``toml`` block is a config the mount's
own parser accepts (its ``*_env`` variables and ``*_file`` files filled with dummy values), every
command of the ``sh`` blocks is a fusefs command line the CLI's parser accepts (``-o`` options
too), and each ``fusefs config check`` is run as written, without ``--probe`` (which would
contact the vendors' clouds; docs/operations.md's probe is run against the emulator by
tests/mount/test_operations.py)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from fusefs import cli, mountopts
from fusefs.providers.registry import REGISTRY, load_config

ROOT = Path(__file__).resolve().parents[2]
PAGES = {name: ROOT / "docs" / "providers" / f"{name}.md" for name in REGISTRY}
# what a block may call its file: a first line `# ~/.config/fusefs/NAME.toml`
HEADER = re.compile(r"^# (\S+\.toml)\n")
SECRET_KEYS = ("app_secret", "token", "password")


def blocks(page: Path, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", page.read_text(), re.MULTILINE | re.DOTALL)


def commands(page: Path) -> list[str]:
    """The command lines of the page's ``sh`` blocks."""
    lines = [line.strip() for block in blocks(page, "sh") for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def materialize(block: str, where: Path) -> tuple[Path, dict[str, str]]:
    """The block as a config file in ``where`` (mode 0600), each ``*_file`` it names written
    there with a dummy value (the value made relative: the file is looked up next to the
    config), and dummy values for the environment variables its ``*_env`` keys name."""
    m = HEADER.match(block)
    name = Path(m.group(1)).name if m else "config.toml"
    where.mkdir(parents=True, exist_ok=True)

    def secret_file(match: re.Match[str]) -> str:
        target = where / Path(match.group(2)).name
        target.write_text(f"dummy-{target.name}\n")
        target.chmod(0o600)
        return f'{match.group(1)} = "{target.name}"'

    text = re.sub(r'^(\w+_file)\s*=\s*"([^"]+)"', secret_file, block, flags=re.MULTILINE)
    env = {var: f"dummy-{var.lower()}" for var in re.findall(r'_env\s*=\s*"([^"]+)"', text)}
    path = where / name
    path.write_text(text)
    path.chmod(0o600)
    return path, env


TOML_CASES = [
    pytest.param(name, i, block, id=f"{name}-{i}")
    for name, page in PAGES.items()
    for i, block in enumerate(blocks(page, "toml"))
]
SH_CASES = [
    pytest.param(name, line, id=f"{name}: {line}")
    for name, page in PAGES.items()
    for line in commands(page)
]


@pytest.mark.parametrize("name", list(PAGES))
def test_each_page_starts_with_getting_started(name: str) -> None:
    page = PAGES[name]
    text = page.read_text()
    sections = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert sections and sections[0] == "Getting started", f"{page}: first section {sections[:1]}"
    assert blocks(page, "toml"), f"{page}: no config example"
    lines = commands(page)
    assert any(re.match(r"fusefs config check \S+ --probe$", c) for c in lines), lines
    assert any(c.startswith("fusefs mount --config ") for c in lines), lines
    # the docs stand alone: no pointer into the notes they were written from
    assert "shared/" not in text and "/work/" not in text


@pytest.mark.parametrize(("name", "index", "block"), TOML_CASES)
def test_config_examples_are_accepted(name: str, index: int, block: str, tmp_path: Path) -> None:
    path, env = materialize(block, tmp_path)
    cfg = load_config(path, env)
    assert cfg.sections[name] is not None, f"{name}.md block {index} has no [{name}] section"
    # never a secret written inline (the parser refuses those: this names the block)
    for key in SECRET_KEYS:
        assert not re.search(rf"^{key}\s*=", block, re.MULTILINE), (name, index, key)


def parse_command(line: str) -> object:
    """``line`` parsed by the CLI's own parser (its message on stderr when it refuses it)."""
    argv = shlex.split(line)
    assert argv[0] == "fusefs", f"not a fusefs command: {line}"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return cli.build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"`{line}` is refused by the CLI (exit {exc.code}): {err.getvalue()}")


@pytest.mark.parametrize(("name", "line"), SH_CASES)
def test_commands_are_fusefs_command_lines(name: str, line: str) -> None:
    args = parse_command(line)
    assert getattr(args, "func", None) is not None, f"`{line}` runs no fusefs command"
    mountopts.parse(list(getattr(args, "options", None) or []))  # -o options: known ones only
    # a config a command names is one of the page's examples
    config = getattr(args, "config", None) or getattr(args, "file", None)
    if config is not None:
        names = [m.group(1) for b in blocks(PAGES[name], "toml") if (m := HEADER.match(b))]
        assert config in names, f"`{line}`: {config} is none of the page's configs {names}"


@pytest.mark.parametrize("name", list(PAGES))
def test_config_check_commands_run(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each `fusefs config check FILE [--probe]` of the page, run on its example (no probe)."""
    examples = {m.group(1): b for b in blocks(PAGES[name], "toml") if (m := HEADER.match(b))}
    checks = [c for c in commands(PAGES[name]) if c.startswith("fusefs config check ")]
    assert checks
    for line in checks:
        argv = [a for a in shlex.split(line)[1:] if a != "--probe"]
        path, env = materialize(examples[argv[2]], tmp_path / argv[2].replace("/", "_"))
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        argv[2] = str(path)
        assert cli.main(argv) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert f"{path}: ok" in out and f"/{name}" in out, out
