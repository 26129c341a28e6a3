"""A minimal single-file Django app on trio-rack: as WSGI (served), and as ASGI, where Django's
asyncio-based handler cannot run on Trio — one log line says so, the client gets a 500.  Both
over HTTP/1.1 and HTTP/2 (httpx, h2c prior knowledge)."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from asgi_support import WIRES, http_version, httpx_options, serving

pytest.importorskip("django")

import django  # noqa: E402
from django.conf import settings  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"django says hi to {request.GET.get('name', 'nobody')} on {request.path}")


def echo(request: HttpRequest) -> JsonResponse:
    body = request.body.decode()
    return JsonResponse({"method": request.method, "body": body, "script": request.META["SCRIPT_NAME"]})


urlpatterns = [path("", index), path("echo/", echo)]

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="test-only-not-secret",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
    )
    django.setup()


@pytest.mark.parametrize("wire", WIRES)
async def test_django_wsgi_app(wire: str) -> None:
    from django.core.wsgi import get_wsgi_application

    app = get_wsgi_application()
    async with serving(app, root_path="/dj") as url:
        async with httpx.AsyncClient(**httpx_options(wire)) as client:
            hello = await client.get(url + "/?name=Grace")
            assert hello.http_version == http_version(wire)
            echoed = await client.post(url + "/echo/", content=b"payload")
            missing = await client.get(url + "/nope/")
    assert hello.status_code == 200
    assert hello.text == "django says hi to Grace on /dj/"
    assert echoed.json() == {"method": "POST", "body": "payload", "script": "/dj"}
    assert missing.status_code == 404


@pytest.mark.parametrize("wire", WIRES)
async def test_django_asgi_handler_needs_asyncio_and_says_so(caplog: Any, wire: str) -> None:
    from django.core.asgi import get_asgi_application

    caplog.set_level(logging.INFO, logger="trio_rack")
    async with serving(get_asgi_application(), lifespan="off") as url:
        async with httpx.AsyncClient(**httpx_options(wire)) as client:
            response = await client.get(url + "/")
            assert response.http_version == http_version(wire)
    assert response.status_code == 500
    lines = [r for r in caplog.records if "does not run on Trio" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
