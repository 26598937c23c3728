"""Accessibility of the browser client: axe-core finds nothing, at desktop and phone width.

axe-core is the npm package pinned in package.json (``npm ci`` puts it in
node_modules/). Without it the tests skip on a laptop and fail in CI. The page's
CSP allows only its own scripts, so the context bypasses CSP to inject axe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from web_helpers import (  # noqa: F401 - fixtures
    MakeWeb,
    fixture_axe,
    fixture_chromium,
    fixture_make_web,
    fixture_tcp,
    import_playwright,
    log_in,
    user_button,
    violations,
)

expect = import_playwright().expect

WIDTHS = [pytest.param(1100, id="desktop"), pytest.param(390, id="phone")]


def report(found: list[dict[str, Any]]) -> str:
    return json.dumps(found, indent=1, ensure_ascii=False)


@pytest.fixture
async def site(make_web: MakeWeb) -> str:
    server = await make_web()
    return f"http://{server.host}:{server.port}"


@pytest.mark.parametrize("width", WIDTHS)
async def test_login_page_has_no_axe_violations(
    axe: Path, chromium: Any, site: str, width: int
) -> None:
    context = await chromium.new_context(viewport={"width": width, "height": 760}, bypass_csp=True)
    page = await context.new_page()
    await page.goto(f"{site}/login")
    await expect(page.get_by_label("Username")).to_be_focused()
    found = await violations(page, axe)
    assert found == [], report(found)
    # The error state too: the alert is part of the form.
    await page.get_by_label("Username").fill("Alice")
    await page.get_by_label("Password").fill("wrong")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
    found = await violations(page, axe)
    assert found == [], report(found)
    await context.close()


@pytest.mark.parametrize("width", WIDTHS)
async def test_chat_page_has_no_axe_violations(
    axe: Path, chromium: Any, site: str, tcp: Any, width: int
) -> None:
    bob = await tcp("Bob")
    charlie = await tcp("Charlie")
    for text in ("Morning! Did the build pass?", "Yes, all green", "Great, shipping it"):
        await bob.client.send_message("Alice", text)
    await charlie.client.send_message("Alice", "Lunch at noon?")
    context = await chromium.new_context(viewport={"width": width, "height": 760}, bypass_csp=True)
    page = await context.new_page()
    await log_in(page, site, "Alice", "123")
    await expect(user_button(page, "Charlie").locator(".badge")).to_have_text("1")
    found = await violations(page, axe)  # the people list, nothing open
    assert found == [], report(found)

    await user_button(page, "Bob").click()
    await expect(page.locator(".msg.theirs .text").last).to_have_text("Great, shipping it")
    await page.get_by_label("Message").fill("On my way")
    await page.get_by_label("Message").press("Enter")
    await expect(page.locator(".msg.mine .text").last).to_have_text("On my way")
    await expect(page.locator("#messages")).to_have_attribute("aria-busy", "false")
    if width > 720:  # side by side: the unread badge is on screen with the conversation
        await expect(user_button(page, "Charlie").locator(".badge")).to_have_text("1")
    found = await violations(page, axe)
    assert found == [], report(found)
    await context.close()
