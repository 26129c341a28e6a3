"""The Flask hello app of the frameworks benchmark (every server runs this same file, as WSGI)."""

from __future__ import annotations

from flask import Flask

app = Flask(__name__)


@app.route("/")
def hello() -> str:
    return "Hello, world!"
