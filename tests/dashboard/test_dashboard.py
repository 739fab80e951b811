"""The /aiops dashboard in real headless Chromium against the whole suite."""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
from playwright.async_api import Browser, ConsoleMessage, Page, expect

from gateway.dashboard import routes
from tests.dashboard.conftest import ARTIFACTS, ROOT, Dashboard, Suite
from tests.helpers import eventually

API = "/api/v1/aiops"
# "degraded" means connected, with one backend's topic failing this round.
CONNECTED = re.compile("^(live|degraded)$")
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def series_key(metric: str) -> str:
    return f'{metric}{{service="checkout"}}'


async def push(
    http: aiohttp.ClientSession, suite: Suite, metric: str, points: list[tuple[float, float]]
) -> None:
    body = {
        "samples": [
            {
                "metric": metric,
                "labels": {"service": "checkout"},
                "sampleTime": rfc3339(t),
                "value": v,
                "unit": "ms",
                "kind": "SERIES_KIND_GAUGE",
            }
            for t, v in points
        ]
    }
    headers = {"Authorization": f"Bearer {suite.token('agent', 'test-agent')}"}
    async with http.post(suite.base + API + "/points", json=body, headers=headers) as resp:
        reply = await resp.json()
        assert resp.status == 200 and not int(reply.get("rejectedCount", 0)), reply


async def rest(
    http: aiohttp.ClientSession, suite: Suite, path: str, role: str = "viewer"
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {suite.token(role)}"}
    async with http.get(suite.base + API + path, headers=headers) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
        return body


async def inject_incident(http: aiohttp.ClientSession, suite: Suite, metric: str) -> str:
    """A steady baseline, then a latency spike; returns the anomaly the suite opened."""
    rng = random.Random(7)
    now = time.time()
    await push(http, suite, metric, [(now - 200 + i, 100 + rng.gauss(0, 2)) for i in range(190)])
    await push(http, suite, metric, [(now - 10 + i, 420 + rng.gauss(0, 2)) for i in range(8)])

    async def opened() -> str:
        body = await rest(http, suite, f"/anomalies?series={series_key(metric)}")
        spikes = [a for a in body.get("anomalies", []) if a.get("peakValue", 0) > 300]
        assert spikes, body
        return str(spikes[0]["name"])

    return await eventually(opened, timeout=30)


async def open_page(browser: Browser, url: str, errors: list[str], **context: Any) -> Page:
    ctx = await browser.new_context(**context)
    page = await ctx.new_page()

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url + "/aiops")
    return page


async def sign_in(page: Page, role: str) -> None:
    await page.get_by_role("button", name=f"Dev sign-in as {role}").click()
    await expect(page.locator("#conn")).to_have_attribute("data-state", CONNECTED, timeout=10_000)
    await expect(page.locator("#whoami")).to_contain_text(role)


async def shot(page: Page, name: str, height: int = 0) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    if height:
        clip = {"x": 0, "y": 0, "width": 1280, "height": height}
        await page.screenshot(path=str(ARTIFACTS / name), full_page=True, clip=clip)
    else:
        await page.screenshot(path=str(ARTIFACTS / name))


async def test_page_loads_without_errors_and_a_chart_shows_pushed_points(
    suite: Suite, dashboard_url: str, browser: Browser, http: aiohttp.ClientSession
) -> None:
    errors: list[str] = []
    page = await open_page(browser, dashboard_url, errors, **DESKTOP)
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert "token" not in page.url
    await sign_in(page, "viewer")
    now = time.time()
    await push(http, suite, "dash_chart_ms", [(now - 30 + i, 50.0 + i % 5) for i in range(30)])
    chart = page.locator("figure.chart").filter(has_text=series_key("dash_chart_ms"))
    begin = time.monotonic()
    await expect(chart.locator("svg path.value")).to_have_count(1, timeout=10_000)
    assert int(await chart.locator("svg").get_attribute("data-points") or 0) > 0
    seconds = time.monotonic() - begin
    assert seconds < 10, seconds
    await expect(page.locator("#slo table")).to_be_visible(timeout=15_000)
    await shot(page, "dashboard-desktop.png")
    assert "token" not in page.url and "eyJ" not in page.url
    assert errors == []


async def test_injected_anomaly_appears_and_false_positive_is_stored(
    suite: Suite, dashboard_url: str, browser: Browser, http: aiohttp.ClientSession
) -> None:
    errors: list[str] = []
    page = await open_page(browser, dashboard_url, errors, **DESKTOP)
    await sign_in(page, "operator")
    name = await inject_incident(http, suite, "dash_incident_ms")
    card = page.locator(f'article.anomaly[data-anomaly="{name}"]')
    await expect(card).to_be_visible(timeout=10_000)
    await expect(card.locator("ol.suggestions li").first).to_be_visible(timeout=10_000)
    await expect(card.locator("button.remediate").first).to_be_visible()
    chart = page.locator("figure.chart").filter(has_text=series_key("dash_incident_ms"))
    await expect(chart.locator("svg rect.band").first).to_be_attached(timeout=10_000)
    await expect(chart.locator("svg line.stem").first).to_be_attached()
    await shot(page, "dashboard-incident.png", height=1100)
    if os.environ.get("AIOPS_UPDATE_DOCS_SCREENSHOT") == "1":
        # Refreshes the README's picture; a plain test run leaves the tree clean.
        shutil.copyfile(ARTIFACTS / "dashboard-incident.png", ROOT / "docs" / "dashboard.png")

    await card.get_by_role("button", name="false positive").click()
    await expect(card.locator(".done")).to_have_text("Marked false positive")

    async def stored() -> None:
        body = await rest(http, suite, f"/feedback?targetKind=TARGET_KIND_ANOMALY&targetId={name}")
        verdicts = [f["verdict"] for f in body.get("feedback", [])]
        assert verdicts == ["VERDICT_FALSE_POSITIVE"], body

    await eventually(stored, timeout=5)

    await card.get_by_role("button", name="Dry run").first.click()
    await expect(page.locator("#notice")).to_contain_text("dry run complete", timeout=10_000)
    await expect(page.locator("#remediations")).to_contain_text("dry run", timeout=10_000)
    await shot(page, "dashboard-after-actions.png")
    assert errors == []


async def test_a_viewer_sees_no_remediation_or_feedback_buttons(
    suite: Suite, dashboard_url: str, browser: Browser, http: aiohttp.ClientSession
) -> None:
    errors: list[str] = []
    name = await inject_incident(http, suite, "dash_viewer_ms")
    page = await open_page(browser, dashboard_url, errors, **DESKTOP)
    await sign_in(page, "viewer")
    card = page.locator(f'article.anomaly[data-anomaly="{name}"]')
    await expect(card.locator("ol.suggestions li").first).to_be_visible(timeout=10_000)
    await expect(page.locator("button.remediate")).to_have_count(0)
    await expect(page.get_by_role("button", name="false positive")).to_have_count(0)
    await expect(page.get_by_role("button", name="Helpful")).to_have_count(0)
    await shot(page, "dashboard-viewer.png")
    assert errors == []


async def test_phone_width_has_no_horizontal_scroll_and_is_keyboard_reachable(
    suite: Suite, dashboard_url: str, browser: Browser
) -> None:
    errors: list[str] = []
    page = await open_page(browser, dashboard_url, errors, **PHONE)
    # Keyboard only: tab to the dev sign-in button and press Enter.
    for _ in range(10):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.dataset.devRole === 'viewer'"):
            break
    else:
        raise AssertionError("the dev sign-in button is not reachable with Tab")
    await page.keyboard.press("Enter")
    await expect(page.locator("#conn")).to_have_attribute("data-state", CONNECTED, timeout=10_000)
    await expect(page.locator("figure.chart").first).to_be_visible(timeout=15_000)
    width = await page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= 390, width
    await shot(page, "dashboard-phone.png")
    assert errors == []


async def test_stream_needs_a_token_in_the_header_not_the_url(
    suite: Suite, dashboard_url: str, http: aiohttp.ClientSession
) -> None:
    async with http.get(dashboard_url + API + "/events") as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "UNAUTHENTICATED"
    token = suite.token("viewer")
    async with http.get(dashboard_url + API + f"/events?access_token={token}") as resp:
        assert resp.status == 401
    async with http.get(
        dashboard_url + API + "/events", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        first = await resp.content.readuntil(b"\n\n")
        assert b"event: hello" in first and b'"viewer"' in first


async def test_dev_token_mints_only_viewer_or_operator(
    dashboard_url: str, http: aiohttp.ClientSession
) -> None:
    async with http.post(dashboard_url + "/aiops/dev-token", json={"role": "admin"}) as resp:
        assert resp.status == 400
    async with http.post(dashboard_url + "/aiops/dev-token", json={"role": "operator"}) as resp:
        body = await resp.json()
        assert resp.status == 200 and body["role"] == "operator" and body["expiresIn"] <= 900
    async with http.get(
        dashboard_url + API + "/feedback", headers={"Authorization": f"Bearer {body['token']}"}
    ) as resp:
        assert resp.status == 200


async def test_the_page_reconnects_when_the_stream_ends(
    dashboard: Dashboard, browser: Browser
) -> None:
    errors: list[str] = []
    page = await open_page(browser, dashboard.url, errors, **DESKTOP)
    await sign_in(page, "viewer")
    hub = dashboard.app[routes.HUB]
    assert len(hub.subscribers) == 1
    hub.disconnect_all()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting")
    await expect(page.locator("#conn")).to_have_attribute("data-state", CONNECTED, timeout=10_000)
    assert len(hub.subscribers) == 1
    assert errors == []
