"""The browser client in real headless Chromium (Debian's, never a downloaded one).

Set WEB_SCREENSHOT_DIR to keep the screenshots (desktop and phone width).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI, CoreProcess, require_tool
from web_helpers import TcpUser

from app.config import WebConfig
from app.web import create_app

try:
    import playwright.async_api as playwright_api
except ImportError:  # a laptop without the test extra skips; CI must have it
    if IN_CI:
        raise
    pytest.skip("playwright not installed: pip install -e '.[test]'", allow_module_level=True)
expect = playwright_api.expect

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    path = require_tool("chromium", "the browser tests drive Debian's headless Chromium")
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def site(core_proc: CoreProcess, aiohttp_server: Any) -> str:
    server = await aiohttp_server(create_app(WebConfig(core=(core_proc.host, core_proc.port))))
    return f"http://{server.host}:{server.port}"


@pytest.fixture
async def tcp(core_proc: CoreProcess) -> AsyncIterator[Any]:
    users: list[TcpUser] = []

    async def login(name: str) -> TcpUser:
        users.append(await TcpUser.login(core_proc.host, core_proc.port, name))
        return users[-1]

    yield login
    for u in users:
        await u.close()


def shot_path(tmp_path: Path, name: str) -> Path:
    return tmp_path / name


def keep(path: Path) -> None:
    target = os.environ.get("WEB_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


async def log_in(page: Any, site: str, name: str, password: str, query: str = "") -> None:
    await page.goto(f"{site}/{query}")
    await expect(page).to_have_url(re.compile(r"/login"))
    await page.get_by_label("Username").fill(name)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#users .user").first).to_be_visible()


def user_button(page: Any, name: str) -> Any:
    return page.locator(f'#users .user[data-name="{name}"]')


async def test_chat_in_the_browser(chromium: Any, site: str, tcp: Any, tmp_path: Path) -> None:
    bob = await tcp("Bob")
    charlie = await tcp("Charlie")
    for text in ("Morning! Did the build pass?", "Yes, all green", "Great, shipping it"):
        await bob.client.send_message("Alice", text)
    context = await chromium.new_context(viewport={"width": 1100, "height": 700})
    page = await context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    await log_in(page, site, "Alice", "123")
    await expect(user_button(page, "Bob").locator(".dot.online")).to_be_visible()
    await expect(user_button(page, "Bob").locator(".badge")).to_have_text("3")
    await expect(page).to_have_title("(3) Chat")

    await user_button(page, "Bob").click()
    await expect(page.locator(".msg.theirs .text").last).to_have_text("Great, shipping it")
    await expect(page).to_have_title("Chat")  # opening the conversation marks it read
    await expect(user_button(page, "Bob").locator(".badge")).to_have_count(0)

    box = page.get_by_label("Message")
    await box.fill("Hello from the browser")
    await box.press("Enter")
    got = await bob.wait_event(
        lambda e: e.get("type") == "message" and e["message"]["from"] == "Alice"
    )
    assert got["message"]["text"] == "Hello from the browser"
    await expect(page.locator(".msg.mine .text").last).to_have_text("Hello from the browser")
    await expect(box).to_have_value("")

    await box.type("line one")
    await box.press("Shift+Enter")
    await box.type("line two")
    await box.press("Enter")
    got = await bob.wait_event(
        lambda e: e.get("type") == "message" and e["message"]["text"].startswith("line one")
    )
    assert got["message"]["text"] == "line one\nline two"

    # Text from another user is shown as typed, never run as HTML.
    await bob.client.send_message("Alice", XSS)
    await expect(page.locator(".msg.theirs .text").last).to_have_text(XSS)
    assert await page.locator("#messages img").count() == 0
    assert dialogs == []

    await charlie.client.send_message("Alice", "Lunch at noon?")
    await expect(user_button(page, "Charlie").locator(".badge")).to_have_text("1")
    await expect(page).to_have_title("(1) Chat")

    await bob.client.send_message("Alice", "Looks good to me 👍")
    await expect(page.locator(".msg.theirs .text").last).to_have_text("Looks good to me 👍")
    # Counted once, whatever refreshes (read markers of the open conversation) ran meanwhile.
    await expect(user_button(page, "Charlie").locator(".badge")).to_have_text("1")
    await expect(page).to_have_title("(1) Chat")
    await page.screenshot(path=shot_path(tmp_path, "web-desktop.png"))
    keep(shot_path(tmp_path, "web-desktop.png"))

    await page.set_viewport_size({"width": 390, "height": 760})
    await expect(page.locator("#back")).to_be_visible()
    await page.screenshot(path=shot_path(tmp_path, "web-phone-conversation.png"))
    keep(shot_path(tmp_path, "web-phone-conversation.png"))
    await page.locator("#back").click()
    await expect(user_button(page, "Charlie")).to_be_visible()
    await page.screenshot(path=shot_path(tmp_path, "web-phone-people.png"))
    keep(shot_path(tmp_path, "web-phone-people.png"))
    assert errors == []
    await context.close()


async def test_login_form_errors_and_keyboard_only(
    chromium: Any, site: str, tmp_path: Path
) -> None:
    page = await chromium.new_page(viewport={"width": 900, "height": 640})
    await page.goto(f"{site}/login")
    await expect(page.get_by_label("Username")).to_be_focused()  # autofocus on load
    await page.keyboard.type("Alice")
    await page.keyboard.press("Tab")
    await page.keyboard.type("wrong")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
    await page.screenshot(path=shot_path(tmp_path, "web-login.png"))
    keep(shot_path(tmp_path, "web-login.png"))
    await page.get_by_label("Password").fill("123")
    await page.keyboard.press("Enter")
    await expect(page.locator("#users .user").first).to_be_visible()
    # Keyboard only: Tab to a person, Enter opens the conversation, focus in the field.
    await page.locator("#users .user").first.focus()
    await page.keyboard.press("Enter")
    await expect(page.get_by_label("Message")).to_be_focused()
    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(re.compile(r"/login"))


async def test_longpoll_mode_and_reconnecting_banner(
    chromium: Any, site: str, tcp: Any, core_proc: CoreProcess
) -> None:
    page = await chromium.new_page()
    await log_in(page, site, "Alice", "123", query="?longpoll=1")
    await user_button(page, "Bob").click()
    bob = await tcp("Bob")
    await bob.client.send_message("Alice", "long-polled")
    await expect(page.locator(".msg.theirs .text").last).to_have_text("long-polled")
    await bob.close()

    core_proc.kill()
    await expect(page.locator("#banner")).to_be_visible(timeout=15_000)
    await expect(page.locator("#banner")).to_have_text("Reconnecting…")
    core_proc.start()
    await expect(page.locator("#banner")).to_be_hidden(timeout=20_000)
    bob = await tcp("Bob")
    await bob.client.send_message("Alice", "after the restart")
    await expect(page.locator(".msg.theirs .text").last).to_have_text("after the restart")
    await expect(page.locator(".msg.theirs .text", has_text="long-polled")).to_have_count(1)


async def test_older_history_loads_on_scroll_up(chromium: Any, site: str, tcp: Any) -> None:
    bob = await tcp("Bob")
    for i in range(70):
        await bob.client.send_message("Alice", f"note {i}")
    page = await chromium.new_page(viewport={"width": 1000, "height": 600})
    await log_in(page, site, "Alice", "123")
    await user_button(page, "Bob").click()
    texts = page.locator("#messages .msg .text")
    await expect(texts).to_have_count(50)  # one page of history
    await expect(texts.last).to_have_text("note 69")
    await page.locator("#messages").evaluate("box => { box.scrollTop = 0; }")
    await expect(texts).to_have_count(70)
    await expect(texts.first).to_have_text("note 0")


async def test_two_tabs_share_a_session(chromium: Any, site: str, tcp: Any) -> None:
    bob = await tcp("Bob")
    context = await chromium.new_context()
    one = await context.new_page()
    await log_in(one, site, "Alice", "123")
    two = await context.new_page()  # same cookie: the same session
    await two.goto(site + "/")
    await bob.client.send_message("Alice", "seen by both tabs")
    for page in (one, two):
        await expect(user_button(page, "Bob").locator(".badge")).to_have_text("1")
    await user_button(one, "Bob").click()
    await expect(one.locator(".msg.theirs .text").last).to_have_text("seen by both tabs")
    # Read in one tab: the other tab's badge and title follow.
    await expect(user_button(two, "Bob").locator(".badge")).to_have_count(0)
    await expect(two).to_have_title("Chat")
    await context.close()
