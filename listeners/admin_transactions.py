"""Admin transactions: the monitoring view per signer, and retry of a failed mint.

The view is what an operator on call needs at a glance: how many intents
wait for a nonce, what each signer has in flight (one line per nonce, with
its latest attempt), which of those are stuck (no inclusion for the
reconciler's stuck threshold in blocks), and the recent failures.

A retry moves a failed intent back to ``ready`` and clears its old nonce and
transaction (the reverted transaction consumed that nonce on chain; the
submitter allocates a fresh one). It is refused while a mint of the intent
is indexed on chain: the contract would refuse a second one anyway.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from haven import db, intents
from haven.daemon import attempts, transfers
from haven.errors import ChainError
from haven.listeners import admin_intents
from haven.listeners import admin_requests as req
from haven.reconciler.config import ReconcilerConfig
from haven.types import intent_id_hex

FAILED_SHOWN = 50


def routes() -> list[web.RouteDef]:
    return [
        web.get("/transactions", overview, name="transactions.overview"),
        web.post("/transactions/{intent_id}/retry", retry, name="transactions.retry"),
    ]


@dataclass(frozen=True)
class InFlight:
    """One nonce of one signer with an unsettled transaction."""

    intent_id: bytes
    signer: str
    nonce: int
    latest: attempts.Attempt
    attempt_count: int
    first_sent_block: int | None

    def to_json(self, head_block: int | None, stuck_after: int) -> dict[str, Any]:
        waiting = None
        if head_block is not None and self.first_sent_block is not None:
            waiting = max(head_block - self.first_sent_block, 0)
        return {
            "intent_id": intent_id_hex(self.intent_id),
            "nonce": self.nonce,
            "tx_hash": self.latest.tx_hash,
            "status": self.latest.status,
            "attempts": self.attempt_count,
            "max_fee_wei": str(self.latest.max_fee_wei),
            "max_priority_fee_wei": str(self.latest.max_priority_fee_wei),
            "first_sent_block": self.first_sent_block,
            "last_sent_at": req.timestamp(self.latest.last_sent_at),
            "blocks_waiting": waiting,
            "stuck": waiting is not None and waiting >= stuck_after,
        }


def group_in_flight(live: list[attempts.Attempt]) -> dict[str, list[InFlight]]:
    """Group live attempts by signer and nonce, in nonce order."""
    by_nonce: dict[tuple[str, int], list[attempts.Attempt]] = defaultdict(list)
    for attempt in live:
        by_nonce[(attempt.signer, attempt.nonce)].append(attempt)
    grouped: dict[str, list[InFlight]] = defaultdict(list)
    for (signer, nonce), tried in sorted(by_nonce.items()):
        sent = [a.sent_block for a in tried if a.sent_block is not None]
        grouped[signer].append(
            InFlight(
                intent_id=tried[-1].intent_id,
                signer=signer,
                nonce=nonce,
                latest=tried[-1],
                attempt_count=len(tried),
                first_sent_block=min(sent) if sent else None,
            )
        )
    return grouped


async def overview(request: web.Request) -> web.Response:
    """Return queued, in-flight, stuck and failed transactions, per signer."""
    query = req.Query(request, ("signer",))
    signer = query.address("signer")
    query.done()
    context = req.context(request)
    stuck_after = ReconcilerConfig.from_settings(context.settings).stuck_after_blocks

    async with db.translate_errors(), context.pool.acquire() as connection:
        live = await attempts.live(connection, signer)
        by_status = await intents.count_by_status(connection)
        failed = await intents.search(
            connection, status=intents.FAILED, signer=signer, limit=FAILED_SHOWN
        )
    head_block = await _head_block(context)

    signers = []
    for address, flying in sorted(group_in_flight(live).items()):
        shown = [item.to_json(head_block, stuck_after) for item in flying]
        signers.append(
            {
                "signer": address,
                "in_flight": len(shown),
                "stuck": sum(1 for item in shown if item["stuck"]),
                "transactions": shown,
            }
        )
    return req.respond(
        {
            "head_block": head_block,
            "stuck_after_blocks": stuck_after,
            "queued": by_status.get(intents.READY, (0, 0))[0],
            "awaiting_approval": by_status.get(intents.APPROVAL, (0, 0))[0],
            "signers": signers,
            "failed": [admin_intents.intent_json(i) for i in failed],
        }
    )


async def _head_block(context: req.AdminContext) -> int | None:
    # The view is still worth having when the node is down: stuck is then
    # unknown (null), not an error.
    try:
        return await context.chain.block_number()
    except ChainError:
        return None


async def retry(request: web.Request) -> web.Response:
    """Move a failed intent back to ready, clearing its spent nonce."""
    body = await req.read_body(request, ("note",))
    note = body.text("note")
    body.done()
    intent_id = req.path_intent_id(request)

    async with db.translate_errors(), req.context(request).pool.acquire() as conn:
        minted = await transfers.mints_of(conn, intent_id)
    if minted:
        block_number = minted[0].position.block_number
        raise req.conflict(
            "already_minted",
            f"a mint of this intent is on chain in block {block_number}; "
            "it cannot be minted again",
        )
    return await admin_intents.decide(
        request,
        from_status=intents.FAILED,
        to_status=intents.READY,
        verb="retried",
        note=note,
        signer=None,
        nonce=None,
        tx_hash=None,
        block_number=None,
        block_hash=None,
    )
