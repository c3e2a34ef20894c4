"""Logging set-up: loguru, JSON lines in production, readable lines in a terminal.

Call :func:`configure` once at start-up. Context keys (``intent_id``,
``nonce``, ``tx_hash``, ``request_id``...) are bound by callers with
``logger.bind`` or passed as keyword arguments, and appear as fields in JSON.
A request's id is bound for everything it causes with :func:`correlated`
(``logger.contextualize``), which the listener does per request and the
daemon per intent, from ``intents.request_id``.

Every line passes a redactor before it is written: the secret values of the
settings (webhook secrets, master keys, admin keys, the deployer key, DSN
passwords) and anything shaped like a bearer credential are replaced by
asterisks, tracebacks included. It is the last line of defence, not a
licence to log secrets.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

from loguru import logger

from haven.settings import Secret, Settings

if TYPE_CHECKING:
    from loguru import Record

MASK = "********"
# Shorter values would mask ordinary words; the settings refuse such secrets.
MIN_SECRET_LENGTH = 6

_TEXT_FORMAT = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{name}</cyan> {message} <dim>{extra}</dim>"
)
# Credentials that may turn up in any text: HTTP bearer tokens and the
# base64 part of Standard Webhooks signatures.
_SHAPES = re.compile(
    r"(?P<prefix>\b[Bb]earer\s+)[^\s\"',;]+"
    r"|(?P<sigprefix>\bv1,)[A-Za-z0-9+/]{20,}={0,2}"
)


class Redactor:
    """Replaces known secret values and credential shapes in text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        values = sorted(
            {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True
        )
        self._values = tuple(values)
        self._known = (
            re.compile("|".join(re.escape(value) for value in values))
            if values
            else None
        )

    def __call__(self, text: str) -> str:
        # Almost no line holds a secret. Substring tests run in C over the
        # line once per secret, where the alternation would be tried at every
        # position: the regular expressions run only on lines that need them.
        if self._known is not None and any(value in text for value in self._values):
            text = self._known.sub(MASK, text)
        if "earer" in text or "v1," in text:
            text = _SHAPES.sub(_mask_shape, text)
        return text


def _mask_shape(match: re.Match[str]) -> str:
    return (match["prefix"] or match["sigprefix"] or "") + MASK


def secret_values(settings: Settings) -> list[str]:
    """Return every secret string of ``settings``, and the parts that sign."""
    found: list[str] = []
    for value in vars(settings).values():
        if isinstance(value, Secret):
            revealed = value.reveal()
            found.extend(revealed if isinstance(revealed, tuple) else [revealed])
    found.extend(
        secret.removeprefix("whsec_")
        for secret in list(found)
        if secret.startswith("whsec_")
    )
    for url in (settings.database_url, settings.redis_url):
        password = urlsplit(url.reveal()).password if url is not None else None
        if password:
            found.append(password)
    return [value for value in found if isinstance(value, str)]


def configure(
    settings: Settings | None, *, process: str, sink: TextIO | None = None
) -> None:
    """Send logs to ``sink`` (stderr) in the configured format, tagged ``process``."""
    fmt = settings.log_format if settings else "text"
    level = (settings.log_level if settings else "info").upper()
    stream = sink or sys.stderr
    redact = Redactor(secret_values(settings) if settings else [])

    def write(message: str) -> None:
        stream.write(redact(str(message)))
        stream.flush()

    logger.remove()
    # JSON escapes what it carries; a text line must escape control
    # characters itself, or a client's path or header could start a line.
    patcher = None if fmt == "json" else _escape_controls
    logger.configure(extra={"process": process}, patcher=patcher)
    if fmt == "json":
        logger.add(write, level=level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(
            write,
            level=level,
            format=_TEXT_FORMAT,
            colorize=stream.isatty(),
            backtrace=False,
            diagnose=False,
        )
    _route_standard_logging(level)


def _escape_controls(record: Record) -> None:
    """Write the control characters of a message as escapes: one record, one line."""
    message = record["message"]
    if not message.isprintable():
        record["message"] = "".join(
            c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
            for c in message
        )


class _ToLoguru(logging.Handler):
    """Carry records of libraries that use ``logging`` (asyncpg, aiohttp,
    apscheduler) into loguru, so they share its format, JSON included.

    A library's warning that carries an exception (asyncpg's pool, each
    time it fails to reconnect while PostgreSQL is down) keeps the
    exception's type and message on its one line; its traceback is shown
    only when haven logs at DEBUG. Errors keep theirs.
    """

    def __init__(self, *, tracebacks_below_error: bool) -> None:
        super().__init__()
        self._tracebacks_below_error = tracebacks_below_error

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        message = record.getMessage()
        exc_info = record.exc_info
        if (
            exc_info
            and exc_info[1] is not None
            and record.levelno < logging.ERROR
            and not self._tracebacks_below_error
        ):
            message = f"{message}: {type(exc_info[1]).__name__}: {exc_info[1]}"
            exc_info = None
        logger.bind(library=record.name).opt(exception=exc_info).log(level, message)


# Libraries whose INFO lines narrate routine (APScheduler: every job added
# and every run of it): heard from at WARNING unless haven logs at DEBUG.
_CHATTY = ("apscheduler",)


def _route_standard_logging(level: str) -> None:
    handler = _ToLoguru(tracebacks_below_error=level == "DEBUG")
    logging.basicConfig(handlers=[handler], level=level, force=True)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(
            logging.NOTSET if level == "DEBUG" else logging.WARNING
        )


@contextmanager
def correlated(request_id: str | None) -> Iterator[None]:
    """Bind ``request_id`` to every log line written inside the block."""
    if not request_id:
        yield
        return
    with logger.contextualize(request_id=request_id):
        yield
