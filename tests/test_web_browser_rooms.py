"""Rooms in the browser client (docs/protocol.md#rooms), in real headless Chromium.

A browser user creates, browses, joins and leaves rooms, lists and adds members,
and talks with desktop (TCP) users in them; sender names, @mentions, unread and
mention badges, the title, the keyboard, phone width and axe-core's checks.
Set WEB_SCREENSHOT_DIR to keep the screenshots (desktop and phone width).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import CoreProcess
from web_helpers import (  # noqa: F401 - fixtures
    MakeWeb,
    fixture_axe,
    fixture_chromium,
    fixture_make_web,
    fixture_tcp,
    import_playwright,
    log_in,
    room_button,
    user_button,
    violations,
)

from legacy_socket_server.rooms import mentioned

expect = import_playwright().expect

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
async def site(make_web: MakeWeb) -> str:
    server = await make_web()
    return f"http://{server.host}:{server.port}"


def keep(path: Path) -> None:
    target = os.environ.get("WEB_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


async def new_page(chromium: Any, width: int, height: int = 720, **options: Any) -> Any:
    context = await chromium.new_context(viewport={"width": width, "height": height}, **options)
    page = await context.new_page()
    page.problems = []  # type: ignore[attr-defined]
    page.on("dialog", lambda d: page.problems.append(f"dialog: {d.message}"))
    page.on("pageerror", lambda e: page.problems.append(f"error: {e}"))
    return page


async def say(user: Any, room: str, text: str) -> dict[str, Any]:
    return (await user.client.call("send_message", room=room, text=text))["message"]


async def test_create_a_room_and_talk_in_it(chromium: Any, site: str, tcp: Any) -> None:
    bob = await tcp("Bob")
    page = await new_page(chromium, 1100)
    await log_in(page, site, "Alice", "123")
    await expect(room_button(page, "general")).to_be_visible()

    await page.get_by_role("button", name="New room").click()
    create = page.get_by_role("dialog", name="New room")
    name = create.get_by_label("Name")
    await expect(name).to_be_focused()
    await name.fill("no way")
    await create.get_by_role("button", name="Create room").click()
    await expect(create.get_by_role("alert")).to_contain_text("1–40 characters")
    await expect(name).to_have_attribute("aria-invalid", "true")
    await name.fill("Design")  # any case: names are lowercased
    await create.get_by_label("Charlie").check()
    await create.get_by_role("button", name="Create room").click()
    await expect(create).to_be_hidden()
    await expect(page.locator("#peer-label")).to_have_text("design")
    await expect(page.get_by_label("Message")).to_be_focused()
    await expect(room_button(page, "design")).to_have_attribute("aria-current", "true")
    await expect(page.locator("#peer-status")).to_have_text("public · 2 members")
    # The same name again is refused, in the dialog.
    await page.get_by_role("button", name="New room").click()
    await name.fill("design")
    await create.get_by_role("button", name="Create room").click()
    await expect(create.get_by_role("alert")).to_contain_text("exists")
    await page.keyboard.press("Escape")
    await expect(create).to_be_hidden()

    await bob.client.call("join_room", room="design")
    await expect(page.locator("#peer-status")).to_have_text("public · 3 members")
    await say(bob, "design", "Here is the new mockup")
    await say(bob, "design", "@alice can you review it?")
    theirs = page.locator("#messages .msg.theirs")
    await expect(theirs).to_have_count(2)
    await expect(theirs.first.locator(".sender")).to_have_text("Bob")
    await expect(theirs.first.locator(".text")).to_have_text("Here is the new mockup")
    mention = page.locator("#messages .msg.mention")
    await expect(mention).to_have_count(1)
    await expect(mention.locator(".text")).to_have_text("@alice can you review it?")
    await expect(mention.locator("mark.at-me")).to_have_text("@alice")
    await expect(page).to_have_title("Chat")  # read as it arrives: the room is open

    box = page.get_by_label("Message")
    await box.fill("On it")
    await box.press("Enter")
    got = await bob.wait_event(lambda e: e["type"] == "message" and e["message"]["text"] == "On it")
    assert got["message"]["room"] == "design" and got["message"]["from"] == "Alice"
    await expect(page.locator("#messages .msg.mine .text").last).to_have_text("On it")

    # Another room: its unread count and a distinct mark for the mention.
    await say(bob, "general", XSS)
    await say(bob, "general", "@Alice! but not @alicex or @alice_b")
    general = room_button(page, "general")
    await expect(general.locator(".badge-room")).to_have_text("2")
    await expect(general.locator(".badge-mention")).to_have_text("@1")
    await expect(general).to_contain_text("2 unread, 1 mention")  # in words, for screen readers
    await expect(page).to_have_title("(2) Chat")
    # A fresh tab of the session has its counts from the server: the same.
    other = await page.context.new_page()
    await other.goto(site + "/")
    await expect(room_button(other, "general").locator(".badge-room")).to_have_text("2")
    await expect(room_button(other, "general").locator(".badge-mention")).to_have_text("@1")
    await other.close()

    await general.click()
    await expect(page.locator("#messages .msg.theirs .text").first).to_have_text(XSS)
    assert await page.locator("#messages img").count() == 0
    await expect(page.locator("#messages .msg.mention")).to_have_count(1)
    await expect(page.locator("#messages mark.at-me")).to_have_text("@Alice")
    await expect(general.locator(".badge")).to_have_count(0)
    await expect(page).to_have_title("Chat")
    assert page.problems == []


async def test_browse_join_members_and_leave(chromium: Any, site: str, tcp: Any) -> None:
    bob = await tcp("Bob")
    charlie = await tcp("Charlie")
    await bob.client.call("create_room", room="releases")
    await bob.client.call("create_room", room="secret", private=True)
    page = await new_page(chromium, 1100)
    await log_in(page, site, "Alice", "123")
    await expect(room_button(page, "general")).to_be_visible()
    await expect(room_button(page, "releases")).to_have_count(0)  # not joined: in Browse

    browse_button = page.get_by_role("button", name=re.compile("^Browse rooms"))
    await expect(browse_button).to_have_accessible_name("Browse rooms, 1 room to join")
    await browse_button.click()
    browse = page.get_by_role("dialog", name="Browse rooms")
    await expect(browse.locator(".browse-item")).to_have_count(1)  # not the private one
    await expect(browse.locator(".browse-item")).to_contain_text("releases1 member")
    await charlie.client.call("create_room", room="lunch")  # shows up live
    await expect(browse.locator(".browse-item")).to_have_count(2)
    await browse.get_by_role("button", name="Join releases").click()
    await expect(browse).to_be_hidden()
    await expect(page.locator("#peer-label")).to_have_text("releases")
    await expect(room_button(page, "releases")).to_have_attribute("aria-current", "true")
    await say(bob, "releases", "v2 is out")
    await expect(page.locator("#messages .msg.theirs .text")).to_have_text("v2 is out")

    # Members, with online dots; add one.
    await page.get_by_role("button", name="Members").click()
    members = page.get_by_role("dialog", name="Members of #releases")
    rows = members.locator(".member")
    await expect(rows).to_have_count(2)
    await expect(rows.filter(has_text="Alice (you)").locator(".dot.online")).to_have_count(1)
    await expect(rows.filter(has_text="Bob").locator(".dot.online")).to_have_count(1)
    await members.get_by_label("Add someone").select_option("Charlie")
    await members.get_by_role("button", name="Add", exact=True).click()
    await expect(rows).to_have_count(3)
    await charlie.wait_event(
        lambda e: e["type"] == "room" and e["room"]["name"] == "releases" and e["room"]["joined"]
    )
    await expect(rows.filter(has_text="Charlie").locator(".dot.online")).to_have_count(1)
    await charlie.close()  # offline: the dot follows
    await expect(rows.filter(has_text="Charlie").locator(".dot")).to_have_count(1)
    await expect(rows.filter(has_text="Charlie").locator(".dot.online")).to_have_count(0)
    await bob.client.call("leave_room", room="releases")  # the list follows
    await expect(rows).to_have_count(2)
    await expect(members.get_by_label("Add someone")).to_have_value("Bob")
    await page.keyboard.press("Escape")
    await expect(members).to_be_hidden()
    await expect(page.get_by_role("button", name="Members")).to_be_focused()
    await expect(page.locator("#peer-status")).to_have_text("public · 2 members")

    # Added to a private room: it appears, marked private.
    await bob.client.call("add_member", room="secret", username="Alice")
    await expect(room_button(page, "secret")).to_contain_text("private room")

    # Leave, after a confirmation.
    await page.get_by_role("button", name="Leave", exact=True).click()
    confirm = page.get_by_role("alertdialog", name="Leave #releases?")
    await expect(confirm.get_by_role("button", name="Cancel")).to_be_focused()
    await confirm.get_by_role("button", name="Cancel").click()
    await expect(confirm).to_be_hidden()
    await expect(page.locator("#peer-label")).to_have_text("releases")
    await page.get_by_role("button", name="Leave", exact=True).click()
    await confirm.get_by_role("button", name="Leave room").click()
    await expect(confirm).to_be_hidden()
    await expect(room_button(page, "releases")).to_have_count(0)
    await expect(page.locator("#peer-label")).to_have_text("No conversation open")
    rooms = {r["name"]: r for r in (await bob.client.call("rooms"))["rooms"]}
    assert rooms["releases"]["members"] == 1  # Charlie, still in
    await browse_button.click()
    await expect(browse.locator(".browse-item", has_text="releases")).to_have_count(1)
    await page.keyboard.press("Escape")

    # Leaving a private room: it is gone, also from Browse.
    await room_button(page, "secret").click()
    await page.get_by_role("button", name="Leave", exact=True).click()
    confirm = page.get_by_role("alertdialog", name="Leave #secret?")
    await expect(confirm).to_contain_text("only one of its members can add you back")
    await confirm.get_by_role("button", name="Leave room").click()
    await expect(room_button(page, "secret")).to_have_count(0)
    await browse_button.click()
    await expect(browse.locator(".browse-item", has_text="secret")).to_have_count(0)
    assert page.problems == []


async def test_rooms_by_keyboard_only(chromium: Any, site: str, tcp: Any) -> None:
    bob = await tcp("Bob")  # online: the first person
    await bob.client.call("create_room", room="lobby")
    page = await new_page(chromium, 1100)
    await log_in(page, site, "Alice", "123")
    general, browse_rooms = room_button(page, "general"), page.locator("#browse-rooms")
    new, person = page.locator("#new-room"), user_button(page, "Bob")
    await expect(general).to_be_visible()
    await page.get_by_role("button", name="Log out").focus()
    await page.keyboard.press("Tab")  # one Tab stop for the whole sidebar
    await expect(person).to_be_focused()
    # Up crosses from the people into the rooms, Down back again.
    for expected in (browse_rooms, new, general, general):
        await page.keyboard.press("ArrowUp")
        await expect(expected).to_be_focused()
    for expected in (new, browse_rooms, person):
        await page.keyboard.press("ArrowDown")
        await expect(expected).to_be_focused()
    await page.keyboard.press("End")
    await expect(user_button(page, "Charlie")).to_be_focused()
    await page.keyboard.press("Home")
    await expect(general).to_be_focused()

    # A new room: Enter opens the dialog, the form by keyboard.
    await page.keyboard.press("ArrowDown")
    await expect(new).to_be_focused()
    await page.keyboard.press("Enter")
    create = page.get_by_role("dialog", name="New room")
    await expect(create.get_by_label("Name")).to_be_focused()
    await page.keyboard.type("ops")
    await page.keyboard.press("Tab")
    await expect(create.get_by_label("Private")).to_be_focused()
    await page.keyboard.press("Space")
    await page.keyboard.press("Tab")
    await expect(create.get_by_label("Bob")).to_be_focused()
    await page.keyboard.press("Space")
    await page.keyboard.press("Shift+Tab")
    await page.keyboard.press("Shift+Tab")
    await page.keyboard.press("Enter")  # in the name field: submits
    await expect(create).to_be_hidden()
    message = page.get_by_label("Message")
    await expect(message).to_be_focused()
    await expect(page.locator("#peer-status")).to_have_text("private · 2 members")
    await page.keyboard.type("hello ops")
    await page.keyboard.press("Enter")
    got = await bob.wait_event(
        lambda e: e["type"] == "message" and e["message"]["text"] == "hello ops"
    )
    assert got["message"]["room"] == "ops"

    # Esc goes back to the sidebar, on the open room; Enter returns.
    await page.keyboard.press("Escape")
    ops = room_button(page, "ops")
    await expect(ops).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(message).to_be_focused()

    # Browse and join by keyboard.
    await page.keyboard.press("Escape")
    await page.keyboard.press("ArrowDown")  # ops -> New room
    await page.keyboard.press("ArrowDown")  # -> Browse rooms
    await expect(browse_rooms).to_be_focused()
    await page.keyboard.press("Enter")
    browse = page.get_by_role("dialog", name="Browse rooms")
    await expect(browse.get_by_role("button", name="Join lobby")).to_be_focused()
    await page.keyboard.press("Escape")  # Esc closes it, back on its button
    await expect(browse).to_be_hidden()
    await expect(browse_rooms).to_be_focused()
    await page.keyboard.press("Enter")
    # The list is fetched again when the dialog opens: Enter once its first button has the
    # focus (a second Enter pressed at once can land before it, under load).
    await expect(browse.get_by_role("button", name="Join lobby")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("#peer-label")).to_have_text("lobby")
    await expect(message).to_be_focused()

    # Leave by keyboard: back from the message box to the header's Leave.
    await page.keyboard.press("Shift+Tab")
    await expect(page.locator("#messages")).to_be_focused()
    await page.keyboard.press("Shift+Tab")
    leave = page.get_by_role("button", name="Leave", exact=True)
    await expect(leave).to_be_focused()
    await page.keyboard.press("Enter")
    confirm = page.get_by_role("alertdialog", name="Leave #lobby?")
    await expect(confirm.get_by_role("button", name="Cancel")).to_be_focused()
    await page.keyboard.press("Escape")  # Esc is "no"
    await expect(confirm).to_be_hidden()
    await expect(leave).to_be_focused()
    await expect(page.locator("#peer-label")).to_have_text("lobby")
    await page.keyboard.press("Enter")
    await page.keyboard.press("Tab")
    await expect(confirm.get_by_role("button", name="Leave room")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(room_button(page, "lobby")).to_have_count(0)
    assert await page.evaluate("document.activeElement.classList.contains('nav-item')")
    assert page.problems == []


async def test_rooms_at_phone_width(chromium: Any, site: str, tcp: Any, tmp_path: Path) -> None:
    bob = await tcp("Bob")
    page = await new_page(chromium, 390, 760)
    await log_in(page, site, "Alice", "123")
    await expect(room_button(page, "general")).to_be_visible()

    async def fits() -> None:
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width} px wide"

    await fits()
    await page.get_by_role("button", name="New room").click()
    create = page.get_by_role("dialog", name="New room")
    box = await create.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    await create.get_by_label("Name").fill("mobile")
    await create.get_by_label("Bob").check()
    await create.get_by_role("button", name="Create room").click()
    await expect(page.locator("#users")).to_be_hidden()  # one column: the room only
    await say(bob, "mobile", "Works on the phone? @Alice")
    await say(bob, "mobile", "A long line " + "without-any-break-" * 12)
    await expect(page.locator("#messages .msg.theirs")).to_have_count(2)
    await expect(page.locator("#messages .msg.mention .sender")).to_have_text("Bob")
    for tool in ("Members", "Leave"):
        button = page.get_by_role("button", name=tool, exact=True)
        await expect(button).to_be_visible()
        box = await button.bounding_box()
        assert box["x"] + box["width"] <= 390, (tool, box)
    await fits()
    await page.screenshot(path=tmp_path / "web-rooms-phone.png")
    keep(tmp_path / "web-rooms-phone.png")

    await page.get_by_role("button", name="Members").click()
    members = page.get_by_role("dialog", name="Members of #mobile")
    await expect(members.locator(".member")).to_have_count(2)
    box = await members.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    await page.keyboard.press("Escape")
    # Esc (or ‹) closes the room and lands on it in the list.
    await page.get_by_label("Message").focus()
    await page.keyboard.press("Escape")
    await expect(room_button(page, "mobile")).to_be_focused()
    await say(bob, "general", "@alice over here")
    await expect(room_button(page, "general").locator(".badge-mention")).to_have_text("@1")
    await fits()
    await page.screenshot(path=tmp_path / "web-rooms-phone-list.png")
    keep(tmp_path / "web-rooms-phone-list.png")
    assert page.problems == []


async def test_room_counts_across_tabs_and_a_list_refresh(
    chromium: Any, site: str, tcp: Any
) -> None:
    bob = await tcp("Bob")
    charlie = await tcp("Charlie")
    await say(bob, "general", "one @alice")
    await say(bob, "general", "two")
    await bob.client.call("create_room", room="ops", members=["Alice", "Charlie"])
    context = await chromium.new_context()
    one = await context.new_page()
    await log_in(one, site, "Alice", "123")
    two = await context.new_page()  # same session; knows general's messages only as counts
    await two.goto(site + "/")
    await expect(room_button(two, "general").locator(".badge-room")).to_have_text("2")
    await expect(room_button(two, "general").locator(".badge-mention")).to_have_text("@1")

    # Tab two's next rooms list is held while Charlie writes: once before the
    # core answers it (the list counts that one) and once after the answer but
    # before the tab has it (the tab must count that one itself).
    refreshes: list[str] = []
    listed: dict[str, tuple[int, int]] = {}

    async def during_refresh(route: Any) -> None:
        refreshes.append(route.request.url)
        if len(refreshes) > 1:
            await route.continue_()
            return
        await say(charlie, "ops", "while the list is asked for, @Alice")
        response = await route.fetch()
        body = await response.json()
        listed.update({r["name"]: (r["unread"], r["mentions"]) for r in body["rooms"]})
        await say(charlie, "ops", "while the list is on its way, @alice.")
        await route.fulfill(response=response)

    await two.route("**/api/rooms", during_refresh)
    # Tab one reads general; tab two hears the marker but does not know
    # general's messages, so it asks for the list.
    await room_button(one, "general").click()
    await expect(room_button(two, "general").locator(".badge")).to_have_count(0)
    await expect(room_button(two, "ops").locator(".badge-room")).to_have_text("2")
    await expect(room_button(two, "ops").locator(".badge-mention")).to_have_text("@2")
    assert listed == {"general": (0, 0), "ops": (1, 1)}  # the list counted one, the tab the other
    await say(charlie, "ops", "and one more, no mention")
    for page in (two, one):
        await expect(room_button(page, "ops").locator(".badge-room")).to_have_text("3")
        await expect(room_button(page, "ops").locator(".badge-mention")).to_have_text("@2")
        await expect(page).to_have_title("(3) Chat")
    # Read in tab two: tab one's badges follow (it knows every message counted).
    await room_button(two, "ops").click()
    await expect(room_button(one, "ops").locator(".badge")).to_have_count(0)
    await expect(one).to_have_title("Chat")
    await context.close()


async def test_room_history_pages_and_a_core_restart(
    chromium: Any, site: str, tcp: Any, core_proc: CoreProcess
) -> None:
    bob = await tcp("Bob")
    for i in range(60):
        await say(bob, "general", f"note {i}")
    await bob.client.call("create_room", room="ops", members=["Alice"])
    page = await new_page(
        chromium,
        1000,
        600,
    )
    await log_in(page, site, "Alice", "123", query="?longpoll=1")
    await expect(room_button(page, "general").locator(".badge-room")).to_have_text("60")
    await room_button(page, "general").click()
    texts = page.locator("#messages .msg .text")
    await expect(texts).to_have_count(50)  # one page of history
    await expect(texts.last).to_have_text("note 59")
    await page.locator("#messages").evaluate("box => { box.scrollTop = 0; }")
    await expect(texts).to_have_count(60)
    await expect(texts.first).to_have_text("note 0")
    await bob.close()

    core_proc.kill()
    await expect(page.locator("#banner")).to_be_visible(timeout=15_000)
    core_proc.start()
    await expect(page.locator("#banner")).to_be_hidden(timeout=20_000)
    bob = await tcp("Bob")
    await say(bob, "general", "after the restart, @alice")
    await expect(page.locator("#messages .msg.mention .text")).to_have_text(
        "after the restart, @alice"
    )
    await say(bob, "ops", "and here")
    await expect(room_button(page, "ops").locator(".badge-room")).to_have_text("1")
    await expect(page).to_have_title("(1) Chat")
    await expect(page.locator("#messages .msg .text", has_text="note 59")).to_have_count(1)
    assert page.problems == []


MENTION_CASES = [
    "@alice",
    "@Alice!",
    "@ALICE.",
    "hi @alice, look",
    "@alicex",
    "@alice_b",
    "@alice-b",
    "@alice1",
    "mail@alice",
    "@@alice",
    "@alice@bob",
    "@alice.smith",
    "@aliceé",
    "@alice\u0301",
    "@alice²",
    "@alice😀",
    "(@alice)",
    "@ alice",
    "@alic",
    "alice",
    "",
    "@Alice's",
    "@alice\nnext",
    "a@alicebob @alice",
]


async def test_the_mention_rule_is_the_cores(chromium: Any, site: str) -> None:
    page = await new_page(chromium, 800)
    await log_in(page, site, "Alice", "123")
    found = await page.evaluate(
        """async (cases) => {
            const { mentions } = await import("/static/mentions.js");
            return cases.map((text) => mentions(text, "Alice"));
        }""",
        MENTION_CASES,
    )
    expected = [mentioned(t, {"alice": "Alice"}.get) == {"Alice"} for t in MENTION_CASES]
    assert dict(zip(MENTION_CASES, found, strict=True)) == dict(
        zip(MENTION_CASES, expected, strict=True)
    )


# -- screenshots and accessibility ---------------------------------------------------------
async def scene(tcp: Any, page: Any, site: str) -> None:
    """A room open with two senders and a mention; badges on rooms and people."""
    bob = await tcp("Bob")
    charlie = await tcp("Charlie")
    await bob.client.call("create_room", room="design", members=["Alice", "Charlie"])
    await bob.client.call("create_room", room="leads", private=True, members=["Alice"])
    await charlie.client.call("create_room", room="random")
    await log_in(page, site, "Alice", "123")
    await room_button(page, "design").click()
    await expect(page.locator("#messages")).to_have_attribute("aria-busy", "false")
    await say(bob, "design", "Morning! The new mockups are up.")
    await say(charlie, "design", "Looks great, the header is much calmer now")
    await say(charlie, "design", "Maybe a bit more contrast on the badges?")
    await say(bob, "design", "@alice could you review the login screen today?")
    await expect(page.locator("#messages .msg.mention")).to_have_count(1)
    await page.get_by_label("Message").fill("Sure, right after standup.")
    await page.get_by_label("Message").press("Enter")
    await expect(page.locator("#messages .msg.mine")).to_have_count(1)
    await say(charlie, "general", "@Alice lunch at noon?")
    await say(bob, "general", "Standup in 5 minutes")
    await say(bob, "leads", "Budget numbers are in")
    await bob.client.send_message("Alice", "Did you see the mockups?")
    await expect(room_button(page, "general").locator(".badge-mention")).to_have_text("@1")
    await expect(page).to_have_title("(4) Chat")


async def test_screenshot_a_room(chromium: Any, site: str, tcp: Any, tmp_path: Path) -> None:
    page = await new_page(chromium, 1100, 700)
    await scene(tcp, page, site)
    await page.get_by_label("Message").blur()
    await page.screenshot(path=tmp_path / "web-rooms.png")
    keep(tmp_path / "web-rooms.png")
    assert page.problems == []


async def no_violations(page: Any, axe: Path, where: str) -> None:
    found = await violations(page, axe)
    assert found == [], f"{where}: {json.dumps(found, indent=1, ensure_ascii=False)}"


@pytest.mark.parametrize("width", [pytest.param(1100, id="desktop"), pytest.param(390, id="phone")])
async def test_rooms_and_their_dialogs_have_no_axe_violations(
    axe: Path, chromium: Any, site: str, tcp: Any, width: int
) -> None:
    page = await new_page(chromium, width, 760, bypass_csp=True)
    await scene(tcp, page, site)
    await no_violations(page, axe, "a room open")

    await page.get_by_role("button", name="Members").click()
    members = page.get_by_role("dialog", name="Members of #design")
    await expect(members.locator(".member")).to_have_count(3)
    await no_violations(page, axe, "members")
    await page.keyboard.press("Escape")

    await page.get_by_role("button", name="Leave", exact=True).click()
    await expect(page.get_by_role("alertdialog")).to_be_visible()
    await no_violations(page, axe, "leave")
    await page.keyboard.press("Escape")

    if width <= 720:
        await page.locator("#back").click()
    await no_violations(page, axe, "the sidebar with badges")
    await page.get_by_role("button", name=re.compile("^Browse rooms")).click()
    browse = page.get_by_role("dialog", name="Browse rooms")
    await expect(browse.locator(".browse-item")).to_have_count(1)
    await no_violations(page, axe, "browse")
    await page.keyboard.press("Escape")

    await page.get_by_role("button", name="New room").click()
    create = page.get_by_role("dialog", name="New room")
    await create.get_by_label("Name").fill("Not valid!")
    await create.get_by_role("button", name="Create room").click()
    await expect(create.get_by_role("alert")).to_be_visible()
    await no_violations(page, axe, "new room, with an error")
    assert page.problems == []
