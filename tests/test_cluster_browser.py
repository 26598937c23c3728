"""Two real cores on one PostgreSQL: a desktop-style client on one, a real Chromium page
(through a web app on the other) — they chat directly and in a room, and each sees the
other's presence, as on one core. Set WEB_SCREENSHOT_DIR to keep the screenshot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from _pg_server import PgServer
from conftest import CoreProcess, new_database
from test_web_failover import WebApp
from web_helpers import (  # noqa: F401 - fixtures
    TcpUser,
    fixture_chromium,
    import_playwright,
    log_in,
    room_button,
    user_button,
)


async def test_a_browser_and_a_desktop_client_on_two_cores(
    chromium: Any, pg_server: PgServer, tmp_path: Path
) -> None:
    expect = import_playwright().expect
    url = await new_database(pg_server)
    one = CoreProcess(tmp_path / "core1", ["--database-url", url]).start()
    two = CoreProcess(tmp_path / "core2", ["--database-url", url]).start()
    web = WebApp("web", two, url, tmp_path).start()
    bob: TcpUser | None = None
    try:
        context = await chromium.new_context(viewport={"width": 1100, "height": 700})
        page = await context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        await log_in(page, web.url, "Alice", "123")

        # Bob logs in on the other core: the page sees him come online.
        bob = await TcpUser.login(one.host, one.port, "Bob")
        await expect(user_button(page, "Bob").locator(".dot.online")).to_be_visible()

        # Directly, both ways.
        await user_button(page, "Bob").click()
        await expect(page.get_by_label("Message")).to_be_enabled()
        await bob.client.send_message("Alice", "from the other core")
        await expect(page.locator(".msg.theirs .text").last).to_have_text("from the other core")
        box = page.get_by_label("Message")
        await box.fill("heard you")
        await box.press("Enter")
        got = await bob.wait_event(
            lambda e: e["type"] == "message" and e["message"]["text"] == "heard you"
        )
        assert got["message"]["from"] == "Alice"

        # In the room everyone is in.
        await room_button(page, "general").click()
        await expect(page.locator("#peer-label")).to_have_text("general")
        await bob.client.call("send_message", room="general", text="hello room")
        await expect(page.locator("#messages .msg.theirs .text").last).to_have_text("hello room")
        await box.fill("hello from the browser")
        await box.press("Enter")
        got = await bob.wait_event(
            lambda e: (
                e["type"] == "message"
                and e["message"].get("room") == "general"
                and e["message"]["from"] == "Alice"
            )
        )
        assert got["message"]["text"] == "hello from the browser"

        shot = tmp_path / "two-cores.png"
        await page.screenshot(path=shot)
        if os.environ.get("WEB_SCREENSHOT_DIR"):
            target = Path(os.environ["WEB_SCREENSHOT_DIR"])
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, target / shot.name)

        # Bob leaves his core: offline in the page served by the other.
        await bob.client.exit()
        bob = None
        await expect(user_button(page, "Bob").locator(".dot.online")).to_have_count(0)
        assert problems == []
        await context.close()
    finally:
        if bob is not None:
            await bob.close()
        web.stop()
        for core in (one, two):
            core.stop()
