"""Backfill: pull partners' recent events from their APIs and apply what was missed.

A partner API answers ``GET <url>?since=<RFC 3339>[&cursor=<c>]`` with
``{"events": [...], "next_cursor": <c> | null}``, each event being the
webhook body plus its ``id`` (the ``webhook-id`` it was or will be delivered
under). Each event goes through the same intake as a webhook, under the
same delivery id, so pulling is idempotent: an event already delivered is
replayed, not applied again, and a webhook arriving after its event was
pulled is answered with the stored answer.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
from loguru import logger

from haven.errors import HavenError
from haven.listeners import events, intake, signatures
from haven.listeners.answers import Rejection
from haven.listeners.deliveries import Delivery
from haven.listeners.rules import RuleBook

MAX_PAGES = 100


class PartnerApiError(HavenError, ConnectionError):
    """A partner API could not be reached or answered something unusable."""


@dataclass(frozen=True)
class PartnerApi:
    """Where one partner's recent events can be pulled, and how to authenticate."""

    partner: str
    url: str
    token: str | None = field(default=None, repr=False)


@dataclass
class PullReport:
    """What one pull of one partner found and did."""

    partner: str
    fetched: int = 0
    applied: int = 0
    already_known: int = 0
    refused: int = 0


class Backfill:
    """Pulls recent events of every configured partner; one instance per process."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        rules: RuleBook,
        apis: tuple[PartnerApi, ...],
        *,
        lookback_s: int = 24 * 3600,
        timeout_s: float = 10.0,
    ) -> None:
        self.pool = pool
        self.rules = rules
        self.apis = apis
        self.lookback_s = lookback_s
        self.timeout_s = timeout_s

    async def run_once(self) -> list[PullReport]:
        """Pull every partner once; raise PartnerApiError or DatabaseUnavailableError.

        Safe to run again at any time and from several processes at once.
        """
        since = datetime.now(UTC) - timedelta(seconds=self.lookback_s)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            return [await self.pull(session, api, since) for api in self.apis]

    async def pull(
        self, session: aiohttp.ClientSession, api: PartnerApi, since: datetime
    ) -> PullReport:
        """Pull one partner's events since ``since`` and apply each one."""
        report = PullReport(api.partner)
        request_id = f"backfill-{uuid.uuid4().hex}"
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            page, cursor = await _fetch_page(session, api, since, cursor)
            for item in page:
                await self._apply(api.partner, item, report, request_id)
            if cursor is None:
                break

        logger.bind(
            partner=api.partner,
            fetched=report.fetched,
            applied=report.applied,
            already_known=report.already_known,
            refused=report.refused,
        ).debug("backfill pulled")
        return report

    async def _apply(
        self, partner: str, item: Any, report: PullReport, request_id: str
    ) -> None:
        report.fetched += 1
        try:
            delivery_id, payload = _split(item)
            body = events.canonical(payload)
            delivery = Delivery.of(
                partner,
                delivery_id,
                body,
                body,
                source="backfill",
                request_id=request_id,
            )
            known = await intake.recall(self.pool, delivery)
            if known is not None:
                report.already_known += 1
                return
            event = events.read(partner, payload)
            await intake.apply(self.pool, self.rules, delivery, event)
        except Rejection as exc:
            report.refused += 1
            logger.bind(partner=partner, code=exc.code).warning(
                "backfilled event refused and skipped: {}; ask the partner to fix it",
                exc.message,
            )
            return
        report.applied += 1


def _split(item: Any) -> tuple[str, dict[str, Any]]:
    """Return the delivery id of a pulled event and its webhook body."""
    if not isinstance(item, dict):
        raise Rejection(422, "invalid_event", "a pulled event must be a JSON object")
    payload = dict(item)
    delivery_id = payload.pop("id", None)
    if not isinstance(delivery_id, str) or not signatures.is_delivery_id(delivery_id):
        raise Rejection(
            422, "invalid_event", "a pulled event needs an id of visible ASCII"
        )
    return delivery_id, payload


async def _fetch_page(
    session: aiohttp.ClientSession,
    api: PartnerApi,
    since: datetime,
    cursor: str | None,
) -> tuple[list[Any], str | None]:
    params = {"since": since.isoformat().replace("+00:00", "Z")}
    if cursor is not None:
        params["cursor"] = cursor
    headers = {"Authorization": f"Bearer {api.token}"} if api.token else {}
    try:
        async with session.get(api.url, params=params, headers=headers) as response:
            if response.status != 200:
                raise PartnerApiError(
                    f"{api.partner} API answered {response.status}; expected 200"
                )
            # The stdlib parser behind parse_body keeps big integers exact;
            # amounts in wei do not fit a float.
            document = events.parse_body(await response.read())
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PartnerApiError(f"{api.partner} API failed: {exc!r}") from exc
    except Rejection as exc:
        raise PartnerApiError(f"{api.partner} API answered bad JSON") from exc
    return _page(api.partner, document)


def _page(partner: str, document: Any) -> tuple[list[Any], str | None]:
    if not isinstance(document, dict) or not isinstance(document.get("events"), list):
        raise PartnerApiError(f"{partner} API answered without an events list")
    cursor = document.get("next_cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise PartnerApiError(f"{partner} API answered a non-string next_cursor")
    return document["events"], cursor or None
