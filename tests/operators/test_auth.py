"""Admin keys: bearer authentication, 401s, fingerprints and the audit of refusals."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from operators.support import (
    ADMIN_KEY,
    GENEROUS,
    OTHER_ADMIN_KEY,
    Client,
    Service,
    environ,
)

from haven import db, settings
from haven.listeners.app import create_app
from haven.listeners.auth import AdminKeys, Unauthorized, fingerprint

ADMIN_PATHS = ["/api/v1/admin/intents", "/api/v1/admin/audit", "/api/v1/admin/nope"]


def key_id(key: str) -> str:
    return fingerprint(hashlib.sha256(key.encode()).digest())


def test_keys_are_kept_only_as_digests():
    keys = AdminKeys.of([ADMIN_KEY])

    assert ADMIN_KEY.encode() not in b"".join(keys.digests)
    assert ADMIN_KEY not in repr(keys)
    assert keys.identify(f"Bearer {ADMIN_KEY}") == key_id(ADMIN_KEY)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        ADMIN_KEY,
        f"Basic {ADMIN_KEY}",
        f"Bearer {ADMIN_KEY}x",
        f"Bearer {ADMIN_KEY} extra",
        "Bearer ",
        "Bearer " + "a" * 600,
    ],
)
def test_anything_but_a_bearer_admin_key_is_refused(header):
    keys = AdminKeys.of([ADMIN_KEY, OTHER_ADMIN_KEY])

    with pytest.raises(Unauthorized):
        keys.identify(header)


def test_each_key_is_known_by_its_own_fingerprint():
    keys = AdminKeys.of([ADMIN_KEY, OTHER_ADMIN_KEY])

    assert keys.identify(f"bearer {OTHER_ADMIN_KEY}") == key_id(OTHER_ADMIN_KEY)
    assert keys.fingerprints == (key_id(ADMIN_KEY), key_id(OTHER_ADMIN_KEY))
    assert all(len(name) == len("key:") + 12 for name in keys.fingerprints)


@pytest.mark.parametrize("path", ADMIN_PATHS)
async def test_a_request_without_a_key_is_answered_401_in_the_error_shape(client, path):
    reply = await client.get(path, key=None)

    assert reply.status == 401
    assert reply.error_code == "unauthorized"
    assert set(reply.body["error"]) == {"code", "message"}
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_wrong_key_is_answered_401_and_audited_as_anonymous(client, service):
    reply = await client.post(
        "/api/v1/admin/intents/0x" + "ab" * 32 + "/approve",
        key="not-the-key-" + "z" * 30,
        headers={"X-Request-Id": "req-wrong-key-1"},
    )

    assert reply.status == 401
    row = await service.pool.fetchrow(
        "SELECT * FROM admin_audit WHERE request_id = 'req-wrong-key-1'"
    )
    assert row["actor"] == "anonymous"
    assert row["outcome"] == "unauthorized"
    assert row["status_code"] == 401
    assert row["action"] == "intents.approve"
    assert row["detail"] == {"reason": "the key is not an admin key"}
    assert "not-the-key" not in str(dict(row))


async def test_a_valid_key_is_audited_by_fingerprint_never_by_value(client, service):
    reply = await client.get(
        "/api/v1/admin/intents",
        key=OTHER_ADMIN_KEY,
        headers={"X-Request-Id": "req-good-key-1"},
    )

    assert reply.status == 200
    row = await service.pool.fetchrow(
        "SELECT * FROM admin_audit WHERE request_id = 'req-good-key-1'"
    )
    assert row["actor"] == key_id(OTHER_ADMIN_KEY)
    assert row["outcome"] == "succeeded"
    assert row["action"] == "intents.list"
    dumped = await service.pool.fetchval(
        "SELECT string_agg(admin_audit::text, '\n') FROM admin_audit"
    )
    assert OTHER_ADMIN_KEY not in dumped
    assert ADMIN_KEY not in dumped


@pytest.fixture
async def strict_service(database_url, redis_prefix, redis_client):
    """A listener allowing 3 refused admin keys a minute per client address."""
    loaded = settings.load(environ(database_url, redis_prefix))
    limits = replace(
        GENEROUS, admin_refusals="3/minute", trusted_proxies=("127.0.0.1/32",)
    )
    pool = await db.create_pool(database_url, min_size=0, max_size=3)
    server = TestServer(
        create_app(loaded, pool, redis_client, rate_limits=limits), host="127.0.0.1"
    )
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        yield Service(url, pool, Client(url, session), loaded)
    await server.close()
    await pool.close()


async def test_a_flood_of_wrong_keys_is_cut_off_per_address_without_audit_rows(
    strict_service,
):
    client = strict_service.client
    wrong = "not-the-key-" + "z" * 30

    refused = [await client.get("/api/v1/admin/intents", key=wrong) for _ in range(5)]
    with_key = await client.get("/api/v1/admin/intents")
    elsewhere = await client.get(
        "/api/v1/admin/intents",
        key=wrong,
        headers={"X-Forwarded-For": "198.51.100.9"},
    )

    assert [r.status for r in refused] == [401, 401, 401, 429, 429]
    assert refused[3].error_code == "rate_limited"
    assert int(refused[3].headers["Retry-After"]) >= 1
    assert with_key.status == 200  # a valid key is never slowed
    assert elsewhere.status == 401  # another client has its own budget
    outcomes = await strict_service.pool.fetch(
        "SELECT outcome, count(*) FROM admin_audit GROUP BY outcome ORDER BY 1"
    )
    assert [tuple(row) for row in outcomes] == [("succeeded", 1), ("unauthorized", 4)]
