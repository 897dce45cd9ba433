"""One wording for TLS failures, whether the Redis client or asyncpg met them.

OpenSSL's text says what went wrong ("certificate verify failed: certificate has expired"), but
Python wraps it in a library tag and the C source line, e.g. `[SSL: CERTIFICATE_VERIFY_FAILED]
… (_ssl.c:1006)`, which tell an operator nothing: they are dropped.
"""

from __future__ import annotations

import re
import ssl

_NOISE = re.compile(r"^\[[A-Z0-9_]+(: [A-Z0-9_]+)?\]\s*|\s*\(_ssl\.c:\d+\)$")


def describe(error: BaseException) -> str | None:
    """`TLS: <OpenSSL's reason>` for an SSL error; None for any other error."""
    if not isinstance(error, ssl.SSLError):
        return None
    text = str(error.args[1]) if len(error.args) > 1 else str(error)
    return f"TLS: {_NOISE.sub('', text) or type(error).__name__}"
