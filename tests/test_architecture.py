"""The shape of the code: no import cycle among resolver modules, and a map that names
every module. Read from the source with ast, so a cycle hidden in a function-level
import counts as much as one at the top; imports under `if TYPE_CHECKING:` are
annotations only and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "resolver"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The resolver modules `name` imports, wherever in the file the import is."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(target: str) -> str | None:
        # `from resolver.store import Recorder` imports resolver.store (or a submodule).
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("resolver"):
                    if (m := resolve(alias.name)) is not None:
                        found.add(m)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("resolver"):
                for alias in node.names:
                    # `from resolver import wire` imports the module resolver.wire.
                    full = f"{module}.{alias.name}"
                    m = full if full in known else resolve(module)
                    if m is not None:
                        found.add(m)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    graph = {name: imports_of(name, path, known) for name, path in mods.items()}
    # A package's __init__ is imported with any of its submodules: not an edge back.
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return out


def test_the_checker_sees_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    # The checker itself must be able to fail: a cycle through a function-level import.
    (tmp_path / "resolver").mkdir()
    (tmp_path / "resolver" / "a.py").write_text("from resolver.b import x\n")
    (tmp_path / "resolver" / "b.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from resolver.c import y\n"
        "def f():\n    from resolver import a\n"
    )
    (tmp_path / "resolver" / "c.py").write_text("import resolver.b\n")
    known = {"resolver.a", "resolver.b", "resolver.c"}
    graph = {
        m: imports_of(m, tmp_path / "resolver" / f"{m.split('.')[1]}.py", known) for m in known
    }
    assert graph["resolver.b"] == {"resolver.a"}  # the TYPE_CHECKING import does not count
    assert cycles(graph) == [["resolver.a", "resolver.b"]]


def test_no_import_cycle_among_resolver_modules() -> None:
    graph = import_graph()
    assert "resolver.pipeline" in graph and graph["resolver.serve"] >= {"resolver.server"}
    assert cycles(graph) == []


def test_the_dns_path_does_not_import_the_cli_the_web_or_dnslib() -> None:
    graph = import_graph()
    hot = ["resolver.wire", "resolver.pipeline", "resolver.policy", "resolver.cache"]
    seen: set[str] = set()
    todo = list(hot)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    assert not {m for m in seen if m.startswith(("resolver.cli", "resolver.web"))}
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        names = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in (
                node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
            )
        }
        assert "dnslib" not in names, f"{name} imports dnslib (kept to the tests: pyproject.toml)"


def test_architecture_md_names_every_module() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    missing = []
    for path in modules().values():
        rel = path.relative_to(ROOT).as_posix()
        # A package may be named by its folder (`resolver/web/`) or its __init__.py.
        names = {rel} if path.name != "__init__.py" else {rel, rel.rpartition("/")[0] + "/"}
        if not any(f"`{n}`" in text for n in names):
            missing.append(rel)
    assert missing == [], f"ARCHITECTURE.md does not name: {', '.join(missing)}"


def test_the_wheel_lists_every_package() -> None:
    """pyproject.toml lists the packages by hand (the catalog is mapped in from
    blocklists/): a new package folder missing there would be missing from a wheel."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set()
