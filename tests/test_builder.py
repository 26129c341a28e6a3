"""trio_rack.Builder: middleware order, mounting with Rack URLMap's rules, the 404 fallback."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import httpx
import pytest

import trio_rack
from trio_rack.testing import Transport


def echo(name):
    async def app(env):
        body = f"{name} {env['SCRIPT_NAME']!r} {env['PATH_INFO']!r}".encode()
        return 200, {"content-type": "text/plain"}, [body]

    return app


def tag(app, label, *, log):
    """A middleware: records the order it sees requests and marks the response."""

    async def wrapped(env):
        log.append(label)
        status, headers, body = await app(env)
        return status, {**headers, f"x-{label}": "1"}, body

    return wrapped


def client(app):
    return httpx.AsyncClient(transport=Transport(app), base_url="http://test")


async def test_use_adds_middleware_in_the_order_written():
    log: list[str] = []
    app = trio_rack.Builder().use(tag, "outer", log=log).use(tag, "inner", log=log).run(echo("main"))
    async with client(app) as c:
        r = await c.get("/x")
    assert r.status_code == 200 and r.text == "main '' '/x'"
    assert log == ["outer", "inner"]
    assert r.headers["x-outer"] == r.headers["x-inner"] == "1"


async def test_mount_adjusts_script_name_and_path_info_like_urlmap():
    app = trio_rack.Builder().mount("/app", echo("app")).mount("/app/admin", echo("admin")).run(echo("root"))
    async with client(app) as c:
        assert (await c.get("/app")).text == "app '/app' ''"
        assert (await c.get("/app/")).text == "app '/app' '/'"
        assert (await c.get("/app/x/y?q=1")).text == "app '/app' '/x/y'"
        # longest prefix wins
        assert (await c.get("/app/admin/users")).text == "admin '/app/admin' '/users'"
        # whole segments only: /app does not match /apple
        assert (await c.get("/apple")).text == "root '' '/apple'"


async def test_mount_nests_and_middleware_wraps_mounts_too():
    log: list[str] = []
    inner = trio_rack.Builder().mount("/v1", echo("v1"))
    app = trio_rack.Builder().use(tag, "mw", log=log).mount("/api", inner)
    async with client(app) as c:
        r = await c.get("/api/v1/items")
    assert r.text == "v1 '/api/v1' '/items'" and log == ["mw"]


async def test_no_run_gives_404_with_x_cascade():
    app = trio_rack.Builder().mount("/only", echo("only"))
    async with client(app) as c:
        r = await c.get("/elsewhere")
    assert r.status_code == 404 and r.headers["x-cascade"] == "pass"


async def test_mount_by_host_wins_over_hostless():
    app = (
        trio_rack.Builder()
        .mount("/", echo("any"))
        .mount("/", echo("api-host"), host="api.example")
    )
    async with client(app) as c:
        assert (await c.get("http://api.example/x")).text == "api-host '' '/x'"
        assert (await c.get("http://api.example:8080/x")).text == "api-host '' '/x'"
        assert (await c.get("http://other.example/x")).text == "any '' '/x'"


async def test_outer_env_is_not_changed_by_mounting():
    seen = {}

    def spy(app):
        async def wrapped(env):
            result = await app(env)
            seen.update(script=env["SCRIPT_NAME"], path=env["PATH_INFO"])
            return result

        return wrapped

    app = trio_rack.Builder().use(spy).mount("/m", echo("m"))
    async with client(app) as c:
        await c.get("/m/x")
    assert seen == {"script": "", "path": "/m/x"}


def test_bad_configuration_is_refused():
    b = trio_rack.Builder()
    with pytest.raises(ValueError, match="starting with '/'"):
        b.mount("app", echo("x"))
    b.mount("/a", echo("x"))
    with pytest.raises(ValueError, match="already mounted"):
        b.mount("/a/", echo("y"))
    with pytest.raises(TypeError):
        b.use("not callable")  # type: ignore[arg-type]


async def test_builder_app_is_served_from_an_app_py(tmp_path):
    """An app.py whose app is a Builder: trio-rack's config.ru, through the real loader."""
    from trio_rack.cli.loader import load_app

    (tmp_path / "app.py").write_text(
        "import trio_rack\n"
        "async def hello(env):\n"
        "    return 200, {}, [b'hello ' + env['SCRIPT_NAME'].encode()]\n"
        "app = trio_rack.Builder().mount('/hi', hello)\n"
    )
    app = load_app(str(tmp_path / "app.py"))
    async with client(app) as c:
        assert (await c.get("/hi/there")).text == "hello /hi"


def _readme_block(start: str) -> str:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    begin = readme.index("```python\n" + start) + len("```python\n")
    return readme[begin : readme.index("```", begin)]


async def test_the_readme_toolkit_app_and_its_test_run(tmp_path, monkeypatch):
    """The README's complete app.py, and its pytest-trio example, exactly as printed."""
    (tmp_path / "public" / "pages").mkdir(parents=True)
    (tmp_path / "public" / "pages" / "index.html").write_text("<h1>home</h1>")
    (tmp_path / "public" / "site.css").write_text("body {}")
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("app")
    exec(compile(_readme_block("# app.py\nimport os"), "README app.py", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "app", module)
    namespace: dict[str, object] = {}
    exec(compile(_readme_block("# test_app.py"), "README test_app.py", "exec"), namespace)
    await namespace["test_notes_api"]()  # type: ignore[operator]
    async with client(module.app) as c:
        assert (await c.get("/")).text == "<h1>home</h1>"
        assert (await c.get("/static/site.css")).headers["cache-control"] == "public, max-age=3600"
