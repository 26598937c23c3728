"""The browser client in real headless Chromium (Debian's, never a downloaded one).

Set WEB_SCREENSHOT_DIR to keep the screenshots (desktop and phone width).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import CoreProcess
from waiting import until
from web_helpers import (  # noqa: F401 - fixtures
    MakeWeb,
    fixture_chromium,
    fixture_make_web,
    fixture_tcp,
    import_playwright,
    log_in,
    user_button,
)

playwright_api = import_playwright()
expect = playwright_api.expect

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
async def site(make_web: MakeWeb) -> str:
    server = await make_web()
    return f"http://{server.host}:{server.port}"


def shot_path(tmp_path: Path, name: str) -> Path:
    return tmp_path / name


def keep(path: Path) -> None:
    target = os.environ.get("WEB_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


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


WATCH_LOG = """() => {
    window.logChanges = [];
    new MutationObserver((records) => {
        const rows = (nodes) => [...nodes].filter((n) => n.classList?.contains("msg")).length;
        for (const r of records) {
            const [added, removed] = [rows(r.addedNodes), rows(r.removedNodes)];
            logChanges.push({ type: r.type, old: r.oldValue, added, removed });
        }
    }).observe(document.getElementById("messages"), {
        childList: true, attributes: true, attributeFilter: ["aria-busy"], attributeOldValue: true,
    });
}"""


async def log_changes(page: Any, since: int = 0) -> list[tuple[str, int, int]]:
    """(aria-busy then, rows added, rows removed) for each change of the message log's rows."""
    records = await page.evaluate("logChanges")
    final = await page.locator("#messages").get_attribute("aria-busy")
    attrs = [i for i, r in enumerate(records) if r["type"] == "attributes"]
    # An attribute record holds the value before; the value after is the next one's "before".
    after = {i: records[j]["old"] for i, j in zip(attrs, attrs[1:], strict=False)}
    busy = records[attrs[0]]["old"] if attrs else final
    changes = []
    for i, r in enumerate(records):
        if r["type"] == "attributes":
            busy = after.get(i, final)
        elif (r["added"] or r["removed"]) and i >= since:
            changes.append((busy, r["added"], r["removed"]))
    return changes


async def test_lists_update_in_place_for_screen_readers(chromium: Any, site: str, tcp: Any) -> None:
    bob = await tcp("Bob")
    charlie = await tcp("Charlie")
    for i in range(60):
        await bob.client.send_message("Alice", f"note {i}")
    await charlie.client.send_message("Alice", "psst")
    page = await chromium.new_page(viewport={"width": 1000, "height": 600})
    await log_in(page, site, "Alice", "123")
    log = page.locator("#messages")
    await expect(log).to_have_attribute("aria-busy", "false")
    await page.evaluate(WATCH_LOG)

    # The log is busy while a conversation loads, and its rows go in meanwhile.
    held: list[Any] = []

    async def hold_first(route: Any) -> None:
        if held:
            await route.continue_()
        else:
            held.append(route)

    await page.route("**/api/history?*", hold_first)
    await user_button(page, "Bob").click()
    await until(lambda: held, what="the history request")
    await expect(log).to_have_attribute("aria-busy", "true")
    await held[0].continue_()
    await expect(page.locator("#messages .msg .text").last).to_have_text("note 59")
    await expect(log).to_have_attribute("aria-busy", "false")
    loaded = await log_changes(page)
    assert sum(added for _, added, _ in loaded) == 50
    assert {busy for busy, _, _ in loaded} == {"true"}, loaded

    # Then rows are only added: a new one at the end (read out), an older page
    # on top (quietly). People buttons are updated, never replaced.
    since = len(await page.evaluate("logChanges"))
    await page.evaluate("""() => {
        for (const b of document.querySelectorAll("#users .user")) b.dataset.kept = "1";
    }""")
    await bob.client.send_message("Alice", "fresh")
    await expect(page.locator("#messages .msg .text").last).to_have_text("fresh")
    await charlie.client.send_message("Alice", "psst again")
    await expect(user_button(page, "Charlie").locator(".badge")).to_have_text("2")
    await charlie.close()  # Charlie goes offline: the dot follows, the button stays
    await expect(user_button(page, "Charlie").locator(".dot.online")).to_have_count(0)
    await expect(user_button(page, "Charlie")).to_have_attribute("data-kept", "1")
    await expect(user_button(page, "Bob")).to_have_attribute("data-kept", "1")
    await log.evaluate("box => { box.scrollTop = 0; }")  # older page
    await expect(page.locator("#messages .msg")).to_have_count(61)
    await expect(page.locator("#messages .msg .text").first).to_have_text("note 0")
    assert await log_changes(page, since) == [("false", 1, 0)] + [("true", 1, 0)] * 10
    assert await page.locator("#messages .day").count() == 1  # one day, one separator

    # Another conversation (loaded or not) is a rebuild, busy all along.
    since = len(await page.evaluate("logChanges"))
    await user_button(page, "Charlie").click()
    await expect(page.locator("#messages .msg .text").last).to_have_text("psst again")
    await user_button(page, "Bob").click()
    await expect(page.locator("#messages .msg")).to_have_count(61)
    await expect(log).to_have_attribute("aria-busy", "false")
    switched = await log_changes(page, since)
    assert {busy for busy, _, _ in switched} == {"true"}, switched
    assert sum(added for _, added, _ in switched) == 2 + 61


async def test_keyboard_moves_through_people_and_esc_returns_to_them(
    chromium: Any, site: str, tcp: Any
) -> None:
    await tcp("Bob")  # online: first in the list, then Charlie
    page = await chromium.new_page(viewport={"width": 1100, "height": 700})
    await log_in(page, site, "Alice", "123")
    bob, charlie = user_button(page, "Bob"), user_button(page, "Charlie")
    await expect(page.locator("#users .user")).to_have_count(2)
    await expect(page.locator("#users .user").first).to_have_attribute("data-name", "Bob")
    # One Tab stop for the whole list; the arrows move within it.
    await page.get_by_role("button", name="Log out").focus()
    await page.keyboard.press("Tab")
    await expect(bob).to_be_focused()
    await page.keyboard.press("ArrowDown")
    await expect(charlie).to_be_focused()
    await page.keyboard.press("ArrowDown")  # the end: stays
    await expect(charlie).to_be_focused()
    await page.keyboard.press("ArrowUp")
    await expect(bob).to_be_focused()
    await page.keyboard.press("Enter")
    message = page.get_by_label("Message")
    await expect(message).to_be_focused()
    await expect(page.locator("#peer-name")).to_have_text("Bob")

    # Side by side, Esc goes to the list and the conversation stays open.
    await page.keyboard.press("Escape")
    await expect(bob).to_be_focused()
    await expect(page.locator("#peer-name")).to_have_text("Bob")
    await page.keyboard.press("ArrowDown")
    await page.keyboard.press("Enter")
    await expect(message).to_be_focused()
    await expect(page.locator("#peer-name")).to_have_text("Charlie")

    # One column: Esc closes the conversation and lands on its person.
    await page.set_viewport_size({"width": 390, "height": 760})
    await expect(page.locator("#users")).to_be_hidden()
    await message.focus()
    await page.keyboard.press("Escape")
    await expect(charlie).to_be_focused()
    await expect(page.locator("#back")).to_be_hidden()
    await page.keyboard.press("ArrowUp")
    await expect(bob).to_be_focused()
    await page.keyboard.press("Space")
    await expect(message).to_be_focused()
    await expect(page.locator("#peer-name")).to_have_text("Bob")


async def test_a_message_during_a_list_refresh_is_counted_once(
    chromium: Any, site: str, tcp: Any
) -> None:
    bob = await tcp("Bob")
    charlie = await tcp("Charlie")
    for text in ("one", "two"):
        await bob.client.send_message("Alice", text)
    context = await chromium.new_context()
    one = await context.new_page()
    await log_in(one, site, "Alice", "123")
    two = await context.new_page()  # same session; knows Bob's messages only as a count
    await two.goto(site + "/")
    await expect(user_button(two, "Bob").locator(".badge")).to_have_text("2")

    # Tab two's next users list is held while Charlie writes: once before the
    # core answers it (the list counts that one) and once after the answer but
    # before the tab has it (the tab must count that one itself).
    refreshes: list[str] = []
    listed: dict[str, int] = {}

    async def during_refresh(route: Any) -> None:
        refreshes.append(route.request.url)
        if len(refreshes) > 1:
            await route.continue_()
            return
        await charlie.client.send_message("Alice", "while the list is asked for")
        response = await route.fetch()
        listed.update({u["username"]: u["unread"] for u in (await response.json())["users"]})
        await charlie.client.send_message("Alice", "while the list is on its way")
        await route.fulfill(response=response)

    await two.route("**/api/users", during_refresh)
    # Tab one reads Bob's messages; tab two gets the read marker but does not
    # know Bob's messages, so it asks for the list.
    await user_button(one, "Bob").click()
    await expect(user_button(two, "Bob").locator(".badge")).to_have_count(0)
    await expect(user_button(two, "Charlie").locator(".badge")).to_have_text("2")
    assert listed == {"Bob": 0, "Charlie": 1}  # the list counted one, the tab the other
    await charlie.client.send_message("Alice", "and one more")
    for page in (two, one):
        await expect(user_button(page, "Charlie").locator(".badge")).to_have_text("3")
        await expect(page).to_have_title("(3) Chat")
    await context.close()
