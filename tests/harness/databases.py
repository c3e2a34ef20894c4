"""Throwaway PostgreSQL databases for tests.

A session migrates one template database; each test that needs a database
gets a fresh copy (``CREATE DATABASE ... TEMPLATE``), so tests never see each
other's rows and never depend on order.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ADMIN_DSN = os.environ.get(
    "HAVENTEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def dsn_for(name: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{name}"


async def create_database(
    template: str | None = None, prefix: str = "haven_test"
) -> str:
    """Create an empty (or templated) database and return its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(ADMIN_DSN)
    try:
        clause = f" TEMPLATE {template}" if template else ""
        await connection.execute(f"CREATE DATABASE {name}{clause}")
    finally:
        await connection.close()
    return name


async def drop_database(name: str) -> None:
    """Drop ``name``, disconnecting anyone still attached."""
    connection = await asyncpg.connect(ADMIN_DSN)
    try:
        await connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await connection.close()


def with_port(dsn: str, port: int) -> str:
    """``dsn`` pointed at ``port`` on 127.0.0.1: a proxy's, or a closed one."""
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}"))
