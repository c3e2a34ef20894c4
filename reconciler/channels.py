"""Alert channels: email over SMTP, and webhooks signed the Standard Webhooks way.

A channel takes one rendered :class:`Message` and either delivers it or
raises :class:`DeliveryError`. Retrying is :func:`deliver`'s job (tenacity,
exponential back-off), so a channel's ``send`` makes exactly one attempt
under an explicit timeout. Messages are rendered from the stored alert and
its evidence only, so what a person reads is what the database holds.

Webhook bodies carry ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>`` under
the endpoint's ``whsec_`` secret. The id is stable for one version of one
alert, so a receiver can drop the duplicates retries may cause.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol

import aiohttp
import aiosmtplib
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from haven.errors import HavenError
from haven.reconciler import evidence as ev
from haven.reconciler.config import SmtpConfig, WebhookConfig

EMAIL = "email"
WEBHOOK = "webhook"


class DeliveryError(HavenError, ConnectionError):
    """A channel could not deliver; ``is_retryable`` if trying again may help."""

    def __init__(
        self, channel: str, message: str, *, is_retryable: bool = True
    ) -> None:
        self.channel = channel
        self.is_retryable = is_retryable
        super().__init__(f"{channel} delivery failed: {message}")


@dataclass(frozen=True)
class Message:
    """One alert rendered for people (subject, text) and machines (payload)."""

    message_id: str
    event: str
    subject: str
    text: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class DeliveryResult:
    channel: str
    is_delivered: bool
    attempts: int
    error: str | None


class Channel(Protocol):
    """Somewhere alerts go."""

    name: str

    async def send(self, message: Message) -> None:
        """Make one delivery attempt; raise DeliveryError on failure."""

    async def close(self) -> None:
        """Release connections; the channel may not be used afterwards."""


def render(alert: Any, *, event: str, digest_hex: str) -> Message:
    """Render an alert (anything with the alert fields) as a message."""
    data = {
        "id": alert.id,
        "rule": alert.rule,
        "subject": alert.subject,
        "severity": alert.severity,
        "status": alert.status,
        "evidence": alert.evidence,
        "first_seen_at": ev.timestamp(alert.first_seen_at),
        "last_seen_at": ev.timestamp(alert.last_seen_at),
        "occurrences": alert.occurrences,
        "digest": digest_hex,
    }
    title = f"[haven {alert.severity}] {alert.rule} {alert.subject} ({event})"
    lines = [
        title,
        "",
        f"alert:       #{alert.id} ({alert.status})",
        f"rule:        {alert.rule}",
        f"subject:     {alert.subject}",
        f"severity:    {alert.severity}",
        f"first seen:  {data['first_seen_at']}",
        f"last seen:   {data['last_seen_at']} ({alert.occurrences} occurrence(s))",
        "",
        "evidence:",
        ev.dumps(alert.evidence, indent=True).decode(),
        "",
    ]
    return Message(
        message_id=f"alert_{alert.id}_{digest_hex[:16]}",
        event=event,
        subject=title,
        text="\n".join(lines),
        payload={"type": event, "data": data},
    )


class EmailChannel:
    """Alert emails through an SMTP relay (aiosmtplib)."""

    name = EMAIL

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    async def send(self, message: Message) -> None:
        email = self._email(message.subject, message.text)
        email["Message-ID"] = f"<{message.message_id}@haven>"
        await self._send(email)

    async def send_report(self, *, subject: str, text: str, html: str) -> None:
        """Mail a report: the text in the body, the HTML page attached."""
        email = self._email(subject, text)
        email.add_attachment(
            html, subtype="html", filename="haven-report.html", charset="utf-8"
        )
        await self._send(email)

    def _email(self, subject: str, text: str) -> EmailMessage:
        email = EmailMessage()
        email["From"] = self.config.sender
        email["To"] = ", ".join(self.config.recipients)
        email["Subject"] = subject
        email.set_content(text)
        return email

    async def _send(self, email: EmailMessage) -> None:
        password = self.config.password.reveal() if self.config.password else None
        try:
            await aiosmtplib.send(
                email,
                hostname=self.config.host,
                port=self.config.port,
                username=self.config.username,
                password=password,
                use_tls=self.config.tls == "tls",
                start_tls=self.config.tls == "starttls",
                timeout=self.config.timeout_s,
            )
        except aiosmtplib.SMTPResponseException as exc:
            # 5xx is a refusal that repeating will not change; 4xx is transient.
            raise DeliveryError(
                EMAIL, f"SMTP {exc.code} {exc.message}", is_retryable=exc.code < 500
            ) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(EMAIL, f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        return None


def sign(secret: str, message_id: str, timestamp_s: int, body: bytes) -> str:
    """Return the Standard Webhooks ``webhook-signature`` value of a body."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp_s}.".encode() + body
    mac = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class WebhookChannel:
    """Alert webhooks: JSON POSTs signed with the endpoint's ``whsec_`` secret."""

    name = WEBHOOK

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def send(self, message: Message) -> None:
        timestamp_s = int(time.time())
        body = ev.dumps({**message.payload, "timestamp": _iso(timestamp_s)})
        headers = {
            "content-type": "application/json",
            "webhook-id": message.message_id,
            "webhook-timestamp": str(timestamp_s),
            "webhook-signature": sign(
                self.config.secret.reveal(), message.message_id, timestamp_s, body
            ),
        }
        try:
            async with self._client().post(
                self.config.url, data=body, headers=headers
            ) as response:
                status = response.status
                await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DeliveryError(WEBHOOK, f"{type(exc).__name__}: {exc}") from exc
        if status >= 300:
            retryable = status >= 500 or status in (408, 429)
            raise DeliveryError(
                WEBHOOK, f"HTTP {status} from the endpoint", is_retryable=retryable
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _iso(timestamp_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp_s))


async def deliver(
    channel: Channel, message: Message, *, attempts: int, backoff_s: float
) -> DeliveryResult:
    """Send with retries; return the outcome instead of raising.

    Retries only failures that may pass (transport errors, 5xx, SMTP 4xx),
    waiting ``backoff_s``, then twice that, and so on. Cancellation is not
    caught.
    """
    tried = 0
    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=backoff_s, max=max(backoff_s * 8, 0)),
        retry=retry_if_exception(
            lambda exc: isinstance(exc, DeliveryError) and exc.is_retryable
        ),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                tried += 1
                await channel.send(message)
    except (DeliveryError, RetryError) as exc:
        return DeliveryResult(channel.name, False, tried, str(exc))
    return DeliveryResult(channel.name, True, tried, None)
