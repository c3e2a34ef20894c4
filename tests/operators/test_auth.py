"""Admin keys: bearer authentication, 401s, fingerprints and the audit of refusals."""

from __future__ import annotations

import hashlib

import pytest
from operators.support import ADMIN_KEY, OTHER_ADMIN_KEY

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
