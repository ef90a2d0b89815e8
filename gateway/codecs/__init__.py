"""Sans-I/O codecs, one per transport: bytes in, events out, no sockets.

The server encodes with them; the Python client, the Locust users and the
tests decode with them. No other parser of these formats exists.
"""

from . import ndjson, sse, ws

__all__ = ["ndjson", "sse", "ws"]
