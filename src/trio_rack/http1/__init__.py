"""The HTTP/1.1 driver: h11 plus trio-rack's strictness rules, under the app layer's exchange.

Importing this package tightens h11's chunk-extension grammar process-wide (see ``_h11_patch``).
"""

from ..net.transport import sendfile_bytes

__all__ = ["sendfile_bytes"]
