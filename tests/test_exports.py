"""The public surface is explicit: what ``trio_rack`` and ``trio_rack.testing`` export is what
users and tests use, and today's import paths keep working (issue #8, point 6)."""

from __future__ import annotations

import importlib

import trio_rack
import trio_rack.testing


def test_top_level_exports_exactly_the_public_api() -> None:
    assert set(trio_rack.__all__) == {
        "Bind", "Builder", "ConfigError", "FileBody", "Limits", "Request", "TLSConfig", "run", "serve", "__version__",
    }  # fmt: skip
    for name in trio_rack.__all__:
        assert getattr(trio_rack, name) is not None


def test_testing_exports_what_tests_use() -> None:
    for name in trio_rack.testing.__all__:
        assert getattr(trio_rack.testing, name) is not None
    assert {"memory_connection", "serve_stream", "ServerState", "PROTOCOLS"} <= set(trio_rack.testing.__all__)
    assert "http1" in trio_rack.testing.PROTOCOLS
    assert trio_rack.testing.Transport.__name__ == "Transport"  # lazily imported (httpx)


def test_documented_import_paths_keep_working() -> None:
    from trio_rack import sse, websocket
    from trio_rack.testing import memory_connection

    assert callable(websocket.accept) and callable(websocket.endpoint)
    assert callable(sse.response)
    assert callable(memory_connection)
    for path in ("trio_rack.broadcast", "trio_rack.lint", "trio_rack.static", "trio_rack.deflate", "trio_rack.asgi",
                 "trio_rack.wsgi"):  # fmt: skip
        importlib.import_module(path)


def test_the_app_layer_imports_no_wire_protocol() -> None:
    """app/ never imports h11, h2 or socket (the exchange is protocol-neutral): checked on source."""
    import ast
    import pathlib

    root = pathlib.Path(trio_rack.__file__).parent / "app"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"h11", "h2", "socket", "ssl"}, f"{path.name} imports {name}"
            if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:
                assert not node.module.startswith(("http1", "server", "net", "cli")), (
                    f"{path.name} imports ..{node.module}"
                )


def test_no_import_cycles_in_src() -> None:
    """Imports go one way (docs/architecture.md): no cycle, counting imports under TYPE_CHECKING
    and function-level (lazy) imports too, since a cycle is a design fault either way."""
    import ast
    import pathlib

    root = pathlib.Path(trio_rack.__file__).parent.parent
    modules: dict[str, set[str]] = {}
    for path in (root / "trio_rack").rglob("*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                deps.add(target)
                deps.update(f"{target}.{alias.name}" for alias in node.names)
                deps.add(f"#from {target}")  # resolved below: the submodules named, else the package
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        modules[name] = deps
    def targets(deps: set[str]) -> set[str]:
        found = set()
        for dep in deps:
            if dep.startswith("#from "):
                package_name = dep[6:]
                named = {d for d in deps if d.startswith(package_name + ".") and d in modules}
                if not named and package_name in modules:
                    found.add(package_name)  # "from pkg import name": the package itself
            elif dep in modules and not any(d == "#from " + dep for d in deps):
                found.add(dep)
        return found

    edges = {m: {d for d in targets(deps) if d != m} for m, deps in modules.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, "import cycle: " + " -> ".join([*path[path.index(module) :], module])
        if module in done:
            return
        for dep in sorted(edges[module]):
            visit(dep, [*path, module])
        done.add(module)

    for module in sorted(modules):
        visit(module, [])
