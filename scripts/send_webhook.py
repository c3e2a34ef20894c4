"""Send one signed webhook to a running listener, as a partner would.

    python scripts/send_webhook.py PARTNER TYPE DATA_JSON [--url URL]

Signs with the partner's first secret from ``HAVEN_WEBHOOK_SECRETS_<PARTNER>``
(Standard Webhooks, ``v1``), posts to ``--url`` (default: the listener of
``HAVEN_LISTEN_HOST``/``HAVEN_LISTEN_PORT``) and prints the answer. Exits 0
on a 2xx answer, 1 otherwise, 2 on bad arguments. For trying haven by hand;
partners use their own Standard Webhooks client.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime


def sign(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``webhook-signature`` value of ``body`` under ``secret``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="send_webhook.py", description=__doc__)
    parser.add_argument("partner", choices=["aurora", "tribe"])
    parser.add_argument("type", help="event type, e.g. booking.completed")
    parser.add_argument("data", help="the event's data object, as JSON")
    parser.add_argument("--url", help="listener base URL")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.data, parse_constant=_refuse_constant)
    except ValueError as exc:
        parser.error(f"DATA_JSON is not JSON: {exc}")
    secrets = os.environ.get(f"HAVEN_WEBHOOK_SECRETS_{args.partner.upper()}", "")
    if not secrets:
        parser.error(f"HAVEN_WEBHOOK_SECRETS_{args.partner.upper()} is not set")
    host = os.environ.get("HAVEN_LISTEN_HOST", "127.0.0.1")
    port = os.environ.get("HAVEN_LISTEN_PORT", "8080")
    url = (args.url or f"http://{host}:{port}").rstrip("/")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        parser.error(f"not a usable listener URL {url!r}: {exc}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        parser.error(f"not a usable listener URL {url!r}: expected http(s)://host:port")
    secret = secrets.split(",")[0].strip()
    try:
        base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:
        parser.error("the partner's secret is not whsec_<base64>")

    envelope = {
        "type": args.type,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": data,
    }
    body = json.dumps(envelope, allow_nan=False).encode()
    delivery_id = f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time())
    request = urllib.request.Request(
        f"{url}/webhooks/{args.partner}",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "webhook-id": delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, delivery_id, timestamp, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, answer = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read()
    except urllib.error.URLError as exc:
        print(f"send_webhook.py: cannot reach {url}: {exc.reason}", file=sys.stderr)
        return 1
    print(status, answer.decode(errors="replace"))
    return 0 if 200 <= status < 300 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
