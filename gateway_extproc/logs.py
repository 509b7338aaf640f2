"""Structured JSON logs on stderr (stdout carries the audit records).

Records carry a request id when the caller passes `extra={"request_id": ...}`. Nothing here logs
request bodies; `redact` strips anything credential-shaped from a message before it is written.
"""

from __future__ import annotations

import datetime
import logging
import re
import sys

import orjson

_SECRET = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+|(sk-[A-Za-z0-9_-]{6})[A-Za-z0-9_-]+|"
    r"(eyJ[A-Za-z0-9_-]{4})[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]*)?"
)


def redact(text: str) -> str:
    """Replace bearer tokens, OpenAI-style keys and JWTs with a marker (keeping a short prefix)."""

    def _sub(m: re.Match[str]) -> str:
        keep = m.group(1) or m.group(2) or m.group(3) or ""
        return keep + "[REDACTED]"

    return _SECRET.sub(_sub, text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            doc["request_id"] = request_id
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(doc).decode()


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
