"""The import rules of docs/architecture.md, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "fusefs"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def modules(sub: str) -> list[Path]:
    return sorted((ROOT / sub).rglob("*.py")) if (ROOT / sub).is_dir() else [ROOT / sub]


def test_only_the_adapter_imports_pyfuse3() -> None:
    for path in ROOT.rglob("*.py"):
        if path.name in ("fuse_ops.py", "mount.py"):
            continue
        assert not any(m.split(".")[0] == "pyfuse3" for m in imports_of(path)), path


def test_emulator_is_an_independent_witness() -> None:
    for path in modules("emulator"):
        for m in imports_of(path):
            if m.startswith("fusefs"):
                assert m.startswith("fusefs.emulator"), f"{path} imports {m}"


def test_providers_do_not_know_the_fs_layers() -> None:
    for path in modules("providers"):
        for m in imports_of(path):
            assert not m.startswith(("fusefs.vfs", "fusefs.cache", "fusefs.fuse_ops")), path


def test_vfs_and_cache_do_not_speak_http() -> None:
    for sub in ("vfs", "cache"):
        for path in modules(sub):
            for m in imports_of(path):
                assert m.split(".")[0] != "httpx", path
                assert not (m.startswith("fusefs.providers") and m != "fusefs.providers.base"), path


def test_importing_fusefs_does_not_import_pyfuse3() -> None:
    import subprocess
    import sys

    code = "import sys, fusefs, fusefs.cli; print('pyfuse3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
