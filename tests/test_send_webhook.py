"""scripts/send_webhook.py signs exactly as a Standard Webhooks sender does."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "send_webhook.py"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def load_script():
    spec = importlib.util.spec_from_file_location("send_webhook", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_its_signature_is_the_standard_webhooks_one():
    body = b'{"type":"booking.completed","data":{"booking_id":"AUR-1"}}'
    sent_at = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)

    ours = load_script().sign(SECRET, "msg_1", int(sent_at.timestamp()), body)

    assert ours == Webhook(SECRET).sign("msg_1", sent_at, body.decode())


@pytest.mark.parametrize(
    ("data", "environ", "said"),
    [
        ("{not json", {}, "DATA_JSON is not JSON"),
        ('{"amount": NaN}', {}, "NaN is not a JSON number"),
        ("{}", {"HAVEN_LISTEN_PORT": "abc"}, "not a usable listener URL"),
        ("{}", {"HAVEN_LISTEN_HOST": "[::1"}, "not a usable listener URL"),
        ("{}", {"HAVEN_WEBHOOK_SECRETS_AURORA": "whsec_abc"}, "not whsec_<base64>"),
    ],
)
def test_bad_input_is_an_argument_error_and_sends_nothing(
    data: str, environ: dict[str, str], said: str
):
    finished = subprocess.run(
        [sys.executable, str(SCRIPT), "aurora", "booking.completed", data],
        env={"HAVEN_WEBHOOK_SECRETS_AURORA": SECRET, "HAVEN_LISTEN_PORT": "1"}
        | environ,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert finished.returncode == 2
    assert said in finished.stderr
    assert "Traceback" not in finished.stderr
