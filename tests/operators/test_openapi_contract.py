"""The running listener against its own OpenAPI document, fuzzed by schemathesis.

Every documented operation gets a bounded number of generated requests,
valid and invalid, with the admin key, against a listener on a real chain
with no token deployed. The run passes only when nothing answers 500 (the
documented 502 and 503 of an unready dependency are answers, not
failures), every status is documented for its operation, and every body
and header matches the document.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import orjson
import pytest
from operators.support import ADMIN_KEY, seed_intent, seed_signer

from haven import db, intents
from haven.listeners import openapi
from haven.reconciler import alerts

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)
EXAMPLES_PER_OPERATION = int(os.environ.get("HAVENTEST_OPENAPI_EXAMPLES", "10"))
RUN_TIMEOUT_S = 150.0
CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "502", "503"]
"""

pytestmark = [
    pytest.mark.skipif(
        not SCHEMATHESIS.exists() and shutil.which("schemathesis") is None,
        reason="schemathesis is not installed (pip install schemathesis)",
    ),
    pytest.mark.timeout(RUN_TIMEOUT_S + 30),
]


def test_the_document_is_valid_json_with_every_route_of_the_surface():
    document = orjson.loads(orjson.dumps(openapi.document()))
    paths = set(document["paths"])

    assert document["openapi"] == "3.1.0"
    assert {"/webhooks/aurora", "/webhooks/tribe", "/healthz", "/readyz"} <= paths
    assert {"/metrics", "/openapi.json", "/reports"} <= paths
    admin = {p for p in paths if p.startswith("/api/v1/admin/")}
    assert len(admin) >= 20
    for path in admin:
        for operation in document["paths"][path].values():
            assert operation["security"] == [{"adminKey": []}]
            assert "401" in operation["responses"]


async def seed(pool) -> None:
    for n in range(3):
        await seed_intent(pool, f"AUR-contract-{n}")
    await seed_intent(pool, "AUR-contract-held", status=intents.APPROVAL)
    await seed_signer(pool)
    async with db.transaction(pool) as connection:
        await alerts.raise_alert(
            connection,
            rule="contract.test",
            subject="books",
            severity=alerts.WARNING,
            evidence={"why": "seeded for the contract test"},
        )


async def test_every_answer_of_the_running_listener_matches_the_document(
    start_service, anvil, tmp_path
):
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    async with start_service(HAVEN_RPC_URL=anvil.url) as service:
        await seed(service.pool)
        process = await run_schemathesis(service.url, tmp_path)
        output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)

    text = output.decode("utf-8", "replace")
    assert process.returncode == 0, text[-20_000:]


async def run_schemathesis(url: str, workdir: Path) -> asyncio.subprocess.Process:
    command = [
        str(SCHEMATHESIS if SCHEMATHESIS.exists() else shutil.which("schemathesis")),
        "--config-file",
        str(workdir / "schemathesis.toml"),
        "run",
        f"{url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--header",
        f"Authorization: Bearer {ADMIN_KEY}",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        "7",
        # One worker: hypothesis describes lambdas with ast.parse, which
        # CPython 3.11 does not allow from several threads at once.
        "--workers",
        "1",
        "--phases",
        "examples,coverage,fuzzing",
        "--request-timeout",
        "20",
        "--no-shrink",
        "--suppress-health-check",
        "all",
        "--report",
        "junit",
        "--report-dir",
        str(workdir),
    ]
    return await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=workdir,
        env=os.environ | {"NO_COLOR": "1"},
    )
