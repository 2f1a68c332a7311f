"""Secrets stay out of logs, manifests and the book: URLs are stored and shown with their credentials
redacted (user:password, and query parameters that look like keys, tokens or signatures), and the HTTP
clients' loggers pass through a filter that does the same to every message.

>>> redact_url("https://user:pw@host/v1?api_key=abc&x=1")
'https://***@host/v1?api_key=***&x=1'
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

# Query parameters whose values are credentials (api_key=, token=, sig=, ...): never stored.
_SECRET_PARAM = re.compile(r"key|token|secret|passw|pwd|sig|auth|credential|session", re.I)


REDACTED = "***"


def redact_url(url: str | None) -> str | None:
    """``url`` without its credentials: the ``user:password@`` part and the values of secret-looking query
    parameters become ``***``. Every place that stores or shows a ``base_url`` (configs, cache files,
    manifests, error messages) uses this; the URL with credentials is only ever handed to the HTTP client.

    >>> redact_url("https://alice:s3cret@llm.example.com:8443/v1?api_key=abc&region=eu")
    'https://***@llm.example.com:8443/v1?api_key=***&region=eu'
    >>> redact_url("http://localhost:8000/v1")
    'http://localhost:8000/v1'
    """
    if url is None:
        return None
    parts = urlsplit(str(url))
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(f"{k}={REDACTED}" if _SECRET_PARAM.search(k) and v else f"{k}={v}" if sep else k
                     for k, sep, v in (item.partition("=") for item in parts.query.split("&") if item))
    return urlunsplit(parts._replace(netloc=netloc, query=query))


_URL = re.compile(r"https?://[^\s'\"<>]+")


# The HTTP stack logs every request's full URL (httpx at INFO); its records pass through this filter.
HTTP_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "openai._base_client")


class _RedactURLs(logging.Filter):
    """Rewrites URLs in a log record with :func:`redact_url` (a base_url's credentials never reach a log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "://" in message:
            redacted = _URL.sub(lambda m: redact_url(m.group()), message)
            if redacted != message:
                record.msg, record.args = redacted, ()
        return True


_REDACT_FILTER = _RedactURLs()


def url_secrets(url: str | None) -> list[str]:
    """The credential strings inside ``url`` (what :func:`redact_url` hides), longest first."""
    if not url:
        return []
    parts = urlsplit(str(url))
    found = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        found += [userinfo, *userinfo.split(":")]
    found += [v for k, _, v in (item.partition("=") for item in parts.query.split("&"))
              if _SECRET_PARAM.search(k)]
    # very short pieces (a one-letter user name) would blank ordinary words of a message
    return sorted({f for f in found if len(f) >= 4}, key=len, reverse=True)


def redact_http_logs() -> None:
    """Pass the HTTP clients' log records through the URL filter (idempotent: a filter is added once)."""
    for name in HTTP_LOGGERS:
        logging.getLogger(name).addFilter(_REDACT_FILTER)
