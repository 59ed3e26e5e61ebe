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


def test_providers_import_no_sibling_provider() -> None:
    """A provider module (enos, koodrive, ...) imports only the shared ones: the underscore
    modules, base and window; only the registry imports provider modules."""
    provider_modules = {
        p.stem for p in (ROOT / "providers").glob("*.py") if not p.stem.startswith("_")
    } - {"base", "window", "registry"}
    assert {"enos", "koodrive", "iotda", "roma", "offline"} <= provider_modules
    for path in modules("providers"):
        if path.stem == "registry":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module == "fusefs.providers":
                names = [f"fusefs.providers.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] if node.level == 0 else [f"fusefs.providers.{node.module}"]
            for m in names:
                parts = m.split(".")
                if parts[:2] == ["fusefs", "providers"] and len(parts) > 2:
                    assert parts[2] not in provider_modules, f"{path.name} imports {m}"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of each import that can run: at module level and inside functions (a
    deferred import is still a dependency: cli <-> demo was such a circle), but not under
    ``if TYPE_CHECKING:`` (never runs; type hints may point both ways)."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.orelse:
                visit(stmt)
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((base, [a.name for a in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return out


def import_graph() -> dict[str, set[str]]:
    """fusefs module -> the fusefs modules it imports (a module's parent packages included:
    importing it runs them first)."""
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in paths}
    for me, path in paths.items():
        for module, names in _runtime_imports(path):
            targets = [module, *(f"{module}.{n}" for n in names)]
            for target in targets:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    dep = ".".join(parts[:i])
                    if dep in paths and dep != me:
                        graph[me].add(dep)
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return circles


def test_no_import_circles_in_fusefs() -> None:
    """Among fusefs modules, counting every import that can run (module level and inside
    functions, not under ``if TYPE_CHECKING:``): layers depend one way."""
    circles = import_circles(import_graph())
    assert not circles, f"import circles: {[sorted(c) for c in circles]}"


def test_the_circle_check_sees_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_circles(graph) == [{"a", "b", "c"}]


def test_the_adapter_imports_only_the_vfs_and_errors() -> None:
    """fuse_ops.py talks to the vfs facade (vfs/fs.py) and replies through pyfuse3: no cache or
    provider module, not even for type hints; besides, trio and the standard library."""
    import sys

    for node in ast.walk(ast.parse((ROOT / "fuse_ops.py").read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, "relative import"
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for m in names:
            top = m.split(".")[0]
            if top != "fusefs":
                assert top in ("pyfuse3", "trio", "__future__") or top in sys.stdlib_module_names, m
                continue
            assert not m.startswith(("fusefs.cache", "fusefs.providers")), m
            assert m.startswith(("fusefs.vfs.", "fusefs.errors")), m
