"""Keeping secrets out of what autocanary prints: credentials in URLs.

A URL may carry ``user:password@`` (a Prometheus behind basic auth, a webhook
with a token in its user part). Every message that shows a URL, or a value the
user wrote that may be one, goes through :func:`redact` first.
"""

from __future__ import annotations

import re

# scheme://userinfo@ -- the userinfo is everything up to the last '@' before the host.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]*@")


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``."""
    return _USERINFO.sub(r"\g<scheme>***@", text)
