"""Make h11 refuse malformed chunk extensions (RFC 9112 §7.1.1), until h11 does so itself.

h11 0.16 matches a chunk extension with ``;.*``: any byte but LF, NUL and bare CR included.
A proxy in front that reads those bytes differently frames the body differently — request
smuggling (waitress CVE-2022-24761).  The body bytes never reach us as anything but decoded
data, so the check cannot live in our own code: the chunk-header pattern must be stricter.

h11 looks ``_readers.chunk_header_re`` up each time it parses a chunk header, so replacing it
tightens every h11 connection in the process (h11-based clients included: they too should
refuse such chunks).  The replacement happens only if the pattern is exactly the one this was
written against; any other h11 keeps its own, and ``tests/test_smuggling.py`` says so loudly.
"""

from __future__ import annotations

import logging
import re

__all__ = ["tighten_chunk_extensions"]

log = logging.getLogger("trio_rack.error")

_H11_PATTERN = rb"(?P<chunk_size>([0-9A-Fa-f]){1,20})(?P<chunk_ext>;.*)?[ \t]*\r\n"
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
#: chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ), ext-val = token / quoted-string
_EXT = rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
_STRICT_PATTERN = rb"(?P<chunk_size>[0-9A-Fa-f]{1,20})(?P<chunk_ext>" + _EXT + rb")[ \t]*\r\n"


def tighten_chunk_extensions() -> bool:
    """Install the strict chunk-header pattern in h11; False if h11 is not the expected one."""
    from h11 import _readers

    current = getattr(_readers, "chunk_header_re", None)
    if current is None:
        return False
    if current.pattern == _STRICT_PATTERN:
        return True
    if current.pattern != _H11_PATTERN:
        log.debug("h11's chunk header pattern changed; leaving it as it is")
        return False
    _readers.chunk_header_re = re.compile(_STRICT_PATTERN)
    return True
