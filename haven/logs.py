"""Logging set-up: loguru, JSON lines in production, readable lines in a terminal.

Call :func:`configure` once at start-up. Context keys (``intent_id``,
``nonce``, ``tx_hash``, ``request_id``...) are bound by callers with
``logger.bind`` or passed as keyword arguments, and appear as fields in JSON.
"""

from __future__ import annotations

import sys

from loguru import logger

from haven.settings import Settings

_TEXT_FORMAT = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{name}</cyan> {message} <dim>{extra}</dim>"
)


def configure(settings: Settings | None, *, process: str) -> None:
    """Send logs to stderr in the configured format, tagged with ``process``."""
    fmt = settings.log_format if settings else "text"
    level = (settings.log_level if settings else "info").upper()
    logger.remove()
    logger.configure(extra={"process": process})
    if fmt == "json":
        logger.add(sys.stderr, level=level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(sys.stderr, level=level, format=_TEXT_FORMAT, backtrace=False, diagnose=False)
