"""The reports page in headless Chromium: it renders the fixture's numbers, cleanly."""

from __future__ import annotations

import pytest
from operators import browser
from operators.support import ADMIN_KEY, seed_intent

from haven import intents

pytestmark = pytest.mark.skipif(
    not browser.is_installed(),
    reason=(
        "Debian's chromium is not installed (apt-get install -y chromium); "
        "CI installs it in `make setup`"
    ),
)

# Resolves once the page's script has settled on a state.
SETTLED = """
new Promise((resolve) => {
  const root = document.documentElement;
  const settled = () => ["ready", "error", "login"].includes(root.dataset.state);
  if (settled()) return resolve(root.dataset.state);
  new MutationObserver(() => settled() && resolve(root.dataset.state))
    .observe(root, { attributes: true });
})
"""


def field(name: str) -> str:
    return f"document.querySelector('[data-field=\"{name}\"]')?.textContent"


async def seed_fixture(pool) -> None:
    """Four ready intents (105 HNV) and two awaiting approval (50 HNV)."""
    for n in range(3):
        await seed_intent(pool, f"AUR-page-{n}", amount_wei=10 * 10**18)
    await seed_intent(
        pool, "EV-page", partner="tribe", kind="event", amount_wei=75 * 10**18
    )
    for n in range(2):
        await seed_intent(
            pool, f"AUR-big-{n}", status=intents.APPROVAL, amount_wei=25 * 10**18
        )


async def test_the_page_shows_the_fixture_numbers_with_no_console_errors(
    service, tmp_path
):
    await seed_fixture(service.pool)

    async with browser.open_page() as page:
        await page.navigate(f"{service.url}/reports#key={ADMIN_KEY}")
        state = await page.evaluate(SETTLED)
        shown = {
            name: await page.evaluate(field(name))
            for name in (
                "status:ready:count",
                "status:ready:amount_hnv",
                "status:approval:count",
                "status:approval:amount_hnv",
                "partner:tribe:amount_hnv",
                "verdict",
            )
        }
        bars = await page.evaluate(
            "document.querySelectorAll('#chart svg rect').length"
        )
        address = await page.evaluate("location.href")
        png = await page.screenshot()
        problems = list(page.problems)

    (tmp_path / "reports-page.png").write_bytes(png)
    assert state == "ready"
    assert shown == {
        "status:ready:count": "4",
        "status:ready:amount_hnv": "105",
        "status:approval:count": "2",
        "status:approval:amount_hnv": "50",
        "partner:tribe:amount_hnv": "75",
        "verdict": "incomplete",  # no node answers in this test
    }
    assert bars > 0
    assert ADMIN_KEY not in address
    assert png.startswith(b"\x89PNG")
    assert problems == []


async def test_without_a_key_the_page_asks_for_one_and_loads_nothing(service):
    async with browser.open_page() as page:
        await page.navigate(f"{service.url}/reports")
        state = await page.evaluate(SETTLED)
        form_shown = await page.evaluate(
            "!document.getElementById('haven-login').hidden"
        )
        report = await page.evaluate(
            "document.getElementById('haven-report').innerHTML"
        )
        problems = list(page.problems)

    assert state == "login"
    assert form_shown is True
    assert report == ""
    assert problems == []
    runs = await service.pool.fetchval("SELECT count(*) FROM reconciliation_runs")
    assert runs == 0
