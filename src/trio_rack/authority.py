"""The one home of the Host / ``:authority`` grammar (RFC 9112 §3.2, RFC 3986 §3.2.2).

Two strengths, for two jobs:

* :data:`HOST_RE` is the grammar a request's ``Host`` must match or get a 400 (HTTP/1 strictness,
  HTTP/2 ``:authority``): an IP-literal or a reg-name (possibly empty), an optional port.
* :data:`SAFE_HOST_RE` is what trio-rack is willing to *repeat*: a non-empty reg-name or a
  bracketed IPv6 literal with a port of at most five digits — for the https URL the plain-HTTP
  hint names and for a trusted proxy's forwarded host.  Nothing a browser would interpret
  differently (userinfo, a percent-encoded dot, an empty name) gets through.

Both are byte patterns; :func:`is_safe_host` takes text too.
"""

from __future__ import annotations

import re

__all__ = ["HOST_RE", "SAFE_HOST_RE", "is_safe_host"]

#: Host = uri-host [ ":" port ] (RFC 9112 §3.2, RFC 3986 §3.2.2): an IP-literal or a reg-name.
HOST_RE = re.compile(rb"(?:\[[0-9A-Za-z:.%_~-]+\]|[-A-Za-z0-9._~!$&'()*+,;=%]*)(?::[0-9]*)?")
#: A host worth echoing: a reg-name or IPv4, or a bracketed IPv6 literal, and a short port.
SAFE_HOST_RE = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+;=%-]+)(?::[0-9]{1,5})?")


def is_safe_host(value: str | bytes) -> bool:
    """Whether ``value`` matches :data:`SAFE_HOST_RE` (text is taken as Latin-1)."""
    if isinstance(value, str):
        try:
            value = value.encode("latin-1")
        except UnicodeEncodeError:
            return False
    return SAFE_HOST_RE.fullmatch(value) is not None
