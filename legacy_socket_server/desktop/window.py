"""The Tk view: a login screen and the chat screen, rendering a ChatClient.

The view holds no chat state of its own: every 100 ms it calls
``ChatClient.tick()`` and redraws what the returned change names cover;
clicks and keys become model calls. Run with ``python chatapp.py`` or
``chat-desktop``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tkinter as tk
from collections.abc import Callable
from pathlib import Path
from tkinter import ttk
from typing import Any

from ..settings import setup_logging
from . import model as m
from .config import Config, parse_args
from .conversation import snapshot
from .dialogs import CertificateWarning, Dialog, TrustDialog
from .sheets import BrowseSheet, LeaveSheet, MembersSheet, NewRoomSheet, Sheet
from .trust import Refusal
from .widgets import (
    MUTED,
    OFFLINE,
    ONLINE,
    SECURE,
    SIDEBAR,
    SURFACE,
    WARN_TEXT,
    LockMark,
    MessageView,
    Sidebar,
    apply_theme,
)

log = logging.getLogger(__name__)

#: The model's heartbeat (the seed client's polling interval).
TICK_MS = 100
APP_NAME = "Team Chat"


class LoginScreen(ttk.Frame):
    """Username, masked password, Log in (or Retry), and the server's answer."""

    def __init__(self, app: ChatWindow) -> None:
        super().__init__(app.root, style="TFrame")
        self.app = app
        card = ttk.Frame(self, style="Card.TFrame", padding=(36, 30))
        card.place(relx=0.5, rely=0.5, anchor="center")
        ttk.Label(card, text=APP_NAME, style="Title.TLabel").pack(anchor="w")
        ttk.Label(card, text="Sign in to chat with your team.", style="Muted.TLabel").pack(
            anchor="w", pady=(2, 18)
        )
        ttk.Label(card, text="Username", style="Card.TLabel").pack(anchor="w")
        self.username = ttk.Entry(card, width=32)
        self.username.pack(fill="x", pady=(4, 12))
        ttk.Label(card, text="Password", style="Card.TLabel").pack(anchor="w")
        self.password = ttk.Entry(card, width=32, show="•")
        self.password.pack(fill="x", pady=(4, 8))
        self.message = ttk.Label(card, text="", style="Error.TLabel", wraplength=300)
        self.message.pack(anchor="w", pady=(0, 8), fill="x")
        self.button = ttk.Button(card, text="Log in", style="Accent.TButton", command=self.submit)
        self.button.pack(fill="x")
        # Before connecting: what a login will do; after: how the connection is protected.
        self.security = LockMark(card, SURFACE, "Muted.TLabel")
        self.security.pack(anchor="w", pady=(14, 0))
        for widget in (self.username, self.password, self.button):
            widget.bind("<Return>", self.submit)
            widget.bind("<KP_Enter>", self.submit)

    def submit(self, _event: Any = None) -> str:
        name = self.username.get().strip()
        if not name:
            self.show_message("Enter your user name.")
            self.username.focus_set()
        else:
            self.app.client.login(name, self.password.get())
            self.sync()
        return "break"

    def show_message(self, text: str, error: bool = True) -> None:
        self.message.configure(text=text, style="Error.TLabel" if error else "Muted.TLabel")

    def sync(self) -> None:
        client = self.app.client
        busy = client.phase == m.LOGGING_IN
        self.button.configure(
            text="Retry" if client.phase == m.UNREACHABLE else "Log in",
            state="disabled" if busy else "normal",
        )
        if busy:
            asking = client.trust_question is not None
            self.show_message("Waiting for your answer…" if asking else "Connecting…", error=False)
        else:
            self.show_message(client.error or "")
        text, details, encrypted, colour = security_line(client, wide=True)
        self.security.show(text, details, encrypted, colour)
        trusted = client.security is not None and client.security.encrypted
        self.security.label.configure(style="Secure.TLabel" if trusted else "Muted.TLabel")

    def shown(self) -> None:
        client = self.app.client
        if client.login_name and not self.username.get():
            self.username.insert(0, client.login_name)
        if client.error and self.username.get():
            # Refused: the password is wrong or the session ended; type it again.
            self.password.delete(0, "end")
        if self.username.get():  # known (--user, or typed before): the password is next
            self.password.focus_set()
        else:
            self.username.focus_set()
        self.sync()


class ChatScreen(ttk.Frame):
    """Rooms and people on the left, the conversation on the right, the composer below it."""

    def __init__(self, app: ChatWindow) -> None:
        super().__init__(app.root)
        self.app = app
        fonts = app.fonts
        side = ttk.Frame(self, style="Side.TFrame", width=240)
        side.pack(side="left", fill="y")
        side.pack_propagate(False)
        ttk.Label(side, text=APP_NAME, style="SideTitle.TLabel").pack(
            anchor="w", padx=18, pady=(18, 0)
        )
        me_row = ttk.Frame(side, style="Side.TFrame")
        me_row.pack(anchor="w", padx=18, pady=(2, 8))
        ttk.Label(me_row, text="●", style="SideMuted.TLabel", foreground=ONLINE).pack(side="left")
        self.me = ttk.Label(me_row, text="", style="SideMuted.TLabel")
        self.me.pack(side="left", padx=(4, 0))
        self.security = LockMark(side, SIDEBAR, "SideMuted.TLabel")
        self.security.pack(anchor="w", padx=(16, 18), pady=(0, 8))
        ttk.Label(
            side,
            text="↑↓ move · Enter open · Esc back\nCtrl+N new room · Ctrl+J join",
            style="SideMuted.TLabel",
            font=fonts["small"],
        ).pack(side="bottom", anchor="w", padx=18, pady=(6, 10))
        buttons = ttk.Frame(side, style="Side.TFrame")
        buttons.pack(side="bottom", fill="x", padx=14, pady=(6, 0))
        self.sidebar = Sidebar(side, fonts, self.open_item)
        self.sidebar.pack(fill="both", expand=True, padx=4)
        self.new_room_button = ttk.Button(
            buttons, text="+ New room", style="Side.TButton", command=self.new_room
        )
        self.new_room_button.pack(side="left", fill="x", expand=True)
        self.browse_button = ttk.Button(
            buttons, text="Join a room", style="Side.TButton", command=self.browse_rooms
        )
        self.browse_button.pack(side="left", fill="x", expand=True, padx=(6, 0))
        buttons.lift(self.sidebar)  # Tab goes from the list to these buttons

        main = self.main = ttk.Frame(self, style="Surface.TFrame")
        main.pack(side="left", fill="both", expand=True)
        head = ttk.Frame(main, style="Surface.TFrame", padding=(18, 12))
        head.pack(fill="x")
        self.peer_dot = tk.Canvas(head, width=12, height=12, bg=SURFACE, highlightthickness=0)
        self.peer_dot.pack(side="left", padx=(0, 8))
        self.room_mark = ttk.Label(head, text="#", style="Room.TLabel")
        self.peer_name = ttk.Label(head, text="", style="Header.TLabel")
        self.peer_name.pack(side="left")
        self.peer_status = ttk.Label(head, text="", style="Muted.TLabel")
        self.peer_status.pack(side="left", padx=10, pady=(4, 0))
        self.room_buttons = ttk.Frame(head, style="Surface.TFrame")
        self.members_button = ttk.Button(
            self.room_buttons, text="Members", style="Ghost.TButton", command=self.show_members
        )
        self.leave_button = ttk.Button(
            self.room_buttons, text="Leave…", style="Ghost.TButton", command=self.leave_room
        )
        self.leave_button.pack(side="right")
        self.members_button.pack(side="right", padx=(0, 6))
        ttk.Separator(main).pack(fill="x")
        self.banner = ttk.Label(main, text="", style="Banner.TLabel")
        self.messages = MessageView(main, fonts, self.app.client.load_older)
        self.messages.pack(fill="both", expand=True)
        ttk.Separator(main).pack(fill="x")
        bar = ttk.Frame(main, style="Surface.TFrame", padding=(14, 10, 14, 2))
        bar.pack(fill="x")
        self.hint = ttk.Label(main, text="", style="Muted.TLabel")
        self.hint.pack(anchor="w", padx=16, pady=(0, 8))
        self.send_button = ttk.Button(bar, text="Send", style="Accent.TButton", command=self.send)
        self.send_button.pack(side="right", padx=(10, 0), anchor="s")
        box = tk.Frame(bar, bg="#cbd5e1", padx=1, pady=1)
        box.pack(side="left", fill="x", expand=True)
        self.entry = tk.Text(
            box, height=3, wrap="word", bd=0, highlightthickness=0, font=fonts["body"],
            padx=8, pady=6, undo=True, bg=SURFACE,
        )  # fmt: skip
        self.entry.pack(fill="both", expand=True)
        self.entry.bind("<FocusIn>", lambda e: box.configure(bg="#2563eb"))
        self.entry.bind("<FocusOut>", lambda e: box.configure(bg="#cbd5e1"))
        self.entry.bind("<Return>", self.send)
        self.entry.bind("<KP_Enter>", self.send)
        self.entry.bind("<Shift-Return>", self._newline)
        self.entry.bind("<Escape>", lambda e: self.sidebar.focus_set())
        self.entry.bind("<Tab>", self._tab_out)
        self.entry.bind("<Prior>", lambda e: self.messages.scroll(-1) or "break")
        self.entry.bind("<Next>", lambda e: self.messages.scroll(1) or "break")
        # Room keys work everywhere on this screen; on the composer they also
        # keep the Text widget's own Ctrl bindings (e.g. Ctrl+N: next line) out.
        for seq, action in SHORTCUTS:
            handler = self._shortcut(getattr(self, action))
            self.entry.bind(seq, handler)
            self.app.root.bind_all(seq, handler)
        for button in (
            self.new_room_button, self.browse_button, self.members_button, self.leave_button
        ):  # fmt: skip
            button.bind("<Return>", lambda e, b=button: b.invoke() or "break")
            button.bind("<KP_Enter>", lambda e, b=button: b.invoke() or "break")
        self.sheet: Sheet | None = None
        self.shown_key: str | None = "?"  # the conversation the view shows (None: none)
        self.refresh_conversation()

    # -- actions --------------------------------------------------------------------
    def open_item(self, kind: str, name: str) -> None:
        """Open a person or a room from the sidebar (joining a public room first)."""
        client = self.app.client
        if kind == "user":
            self._switch(lambda: client.open_conversation(name))
            return
        room = client.rooms.get(name)
        if room is None:
            return
        if room.joined:
            self._switch(lambda: client.open_room(name))
            return

        def joined(ok: bool, message: str | None) -> None:
            if ok:
                self.open_item("room", name)
            else:
                client.error = message
                self.refresh_status()

        error = client.join_room(name, done=joined)
        if error:
            client.error = error
            self.refresh_status()

    def open(self, peer: str) -> None:
        self.open_item("user", peer)

    def _switch(self, action: Callable[[], Any]) -> None:
        self.save_draft()
        action()
        self.refresh_conversation()
        self.refresh_users()
        if self.app.client.conv is not None:
            self.entry.focus_set()

    def send(self, _event: Any = None) -> str:
        text = self.entry.get("1.0", "end-1c")
        if self.app.client.send(text):
            self.entry.delete("1.0", "end")
            self.save_draft()
        return "break"

    def _newline(self, _event: Any) -> str:
        self.entry.insert("insert", "\n")
        self.entry.see("insert")
        return "break"

    def _tab_out(self, _event: Any) -> str:
        self.send_button.focus_set()
        return "break"

    def _shortcut(self, action: Callable[[], Any]) -> Callable[[Any], str]:
        def handler(_event: Any) -> str:
            if self.sheet is None and self.app.dialog is None and self.app.screen is self:
                action()
            return "break"

        return handler

    def _open_sheet(self, sheet: Sheet) -> None:
        if self.sheet is not None:
            self.sheet.close()
        self.sheet = sheet
        sheet.open()

    def new_room(self) -> None:
        self._open_sheet(NewRoomSheet(self))

    def browse_rooms(self) -> None:
        self._open_sheet(BrowseSheet(self))

    def show_members(self) -> None:
        room = self.app.client.room
        if room is not None:
            self._open_sheet(MembersSheet(self, room))

    def leave_room(self) -> None:
        room = self.app.client.room
        if room is not None:
            self._open_sheet(LeaveSheet(self, room))

    def save_draft(self) -> None:
        if self.shown_key not in (None, "?"):
            self.app.client.set_draft(self.shown_key, self.entry.get("1.0", "end-1c"))
        self.entry.edit_modified(False)

    def _set_composer(self, enabled: bool) -> None:
        self.entry.configure(state="normal" if enabled else "disabled")
        self.send_button.configure(state="normal" if enabled else "disabled")

    # -- rendering ------------------------------------------------------------------
    def refresh_users(self) -> None:
        client = self.app.client
        open_key = None
        if client.room is not None:
            open_key = ("room", client.room)
        elif client.peer is not None:
            open_key = ("user", client.peer)
        self.sidebar.set_items(
            client.sorted_rooms(), client.sorted_users(), open_key, client.phase == m.RECONNECTING
        )
        self.me.configure(text=f"Signed in as {client.username}")
        self.security.show(*security_line(client, wide=False))
        self.refresh_header()

    def refresh_header(self) -> None:
        client = self.app.client
        self.peer_dot.delete("all")
        room = client.rooms.get(client.room or "")
        if room is not None:
            self.peer_dot.pack_forget()
            self.room_mark.pack(side="left", padx=(0, 4), before=self.peer_name)
            self.peer_name.configure(text=room.name)
            people = "1 member" if room.members == 1 else f"{room.members} members"
            kind = "private room" if room.private else "public room"
            self.peer_status.configure(text=f"{people} · {kind}")
            self.members_button.configure(text=f"Members ({room.members})")
            self.room_buttons.pack(side="right")
            return
        self.room_mark.pack_forget()
        self.room_buttons.pack_forget()
        self.peer_dot.pack(side="left", padx=(0, 8), before=self.peer_name)
        user = client.users.get(client.peer or "")
        if user is None:
            self.peer_name.configure(text="No conversation open")
            self.peer_status.configure(text="")
            return
        online = user.online and client.phase == m.READY
        colour = ONLINE if online else OFFLINE
        self.peer_dot.create_oval(1, 1, 11, 11, fill=colour, outline=colour)
        self.peer_name.configure(text=user.username)
        status = "online" if online else "offline"
        self.peer_status.configure(text=status if client.phase == m.READY else "status unknown")

    def header_text(self) -> str:
        return " ".join(
            t for t in (self.peer_name.cget("text"), self.peer_status.cget("text")) if t
        )

    def refresh_conversation(self) -> None:
        client = self.app.client
        key = client.conv_key
        if key != self.shown_key:
            # Another conversation (or none): the composer takes that one's draft.
            self.shown_key = key
            self.messages.clear()
            self.entry.configure(state="normal")
            self.entry.delete("1.0", "end")
            self.entry.insert("1.0", client.drafts.get(key or "", ""))
            self.entry.edit_modified(False)
            if key is None:
                self.messages.clear("Choose a room or someone on the left to start a conversation.")
                self._set_composer(enabled=False)
                if self.focus_get() in (self.entry, self.send_button):
                    self.sidebar.focus_set()
            self.refresh_header()
            self.hint.configure(text=ROOM_HINT if client.room else PEOPLE_HINT)
        if client.conv is None:
            return
        self._set_composer(enabled=True)
        if client.conv.loading and not client.messages:
            self.messages.clear("Loading…")
            return
        if client.room is not None:
            self.messages.render(
                client.visible_messages(),
                client.username or "",
                f"No messages in #{client.room} yet. Say hello!",
                mentions=client.mentions_me,
                colour_names=True,
            )
        else:
            self.messages.render(
                client.visible_messages(),
                client.username or "",
                f"No messages with {client.peer} yet. Say hello!",
            )

    def refresh_status(self) -> None:
        client = self.app.client
        if client.phase == m.RECONNECTING:
            self.banner.configure(text="⟳  Connection lost — reconnecting…")
            self.banner.pack(fill="x", before=self.messages)
        elif client.error:
            self.banner.configure(text=client.error)
            self.banner.pack(fill="x", before=self.messages)
        else:
            self.banner.pack_forget()
        key = client.conv_key or ""
        if client.drafts.get(key) and not self.entry.get("1.0", "end-1c"):
            self.entry.insert("1.0", client.drafts[key])  # a refused send, given back


#: Window-wide keys of the chat screen and the ChatScreen method each calls.
SHORTCUTS = (
    ("<Control-n>", "new_room"),
    ("<Control-j>", "browse_rooms"),
    ("<Control-m>", "show_members"),
    ("<Control-l>", "leave_room"),
)


def security_line(client: m.ChatClient, wide: bool) -> tuple[str, str, bool, str]:
    """``(text, tooltip, encrypted, padlock colour)`` for the connection's padlock mark.

    ``wide`` (the login card) fits the fingerprint on the line; the sidebar puts it
    on a second one.
    """
    security = client.security
    if security is None:  # not connected yet: say what a login will do
        if client.tls is None:
            return client.plan, PLAINTEXT_NOTE, False, WARN_TEXT
        return client.plan, "The certificate is checked before anything is sent.", True, MUTED
    if not security.encrypted:
        # The sidebar is narrow: the address goes on its own line, as a fingerprint does.
        sep = " · " if wide else "\n"
        return f"Not encrypted{sep}{client.host}:{client.port}", PLAINTEXT_NOTE, False, WARN_TEXT
    text = security.summary if wide else security.summary.replace(" · ", "\n", 1)
    return text, security.details, True, SECURE if wide else ONLINE


PLAINTEXT_NOTE = "Plaintext: your password and messages cross the network unencrypted."
PEOPLE_HINT = "Enter to send · Shift+Enter for a new line · PgUp/PgDn scroll · Esc to the list"
ROOM_HINT = (
    "Enter to send · Shift+Enter new line · PgUp/PgDn scroll · Ctrl+M members · "
    "Ctrl+L leave · Esc to the list"
)


class ChatWindow:
    """The application: one Tk root, one model, the login or chat screen."""

    def __init__(self, config: Config, root: tk.Tk | None = None) -> None:
        self.config = config
        self.root = root or tk.Tk(className="teamchat")
        self.root.title(APP_NAME)
        self.root.geometry("920x620")
        self.root.minsize(640, 420)
        self.fonts = apply_theme(self.root)
        self.client = m.ChatClient(config.host, config.port, tls=config.tls_options)
        self.client.login_name = config.username
        self.login = LoginScreen(self)
        self.chat: ChatScreen | None = None
        self.screen: ttk.Frame | None = None
        #: The certificate dialog over either screen (a trust question or a warning).
        self.dialog: Dialog | None = None
        self._warned: Refusal | None = None  # the refusal whose warning was shown
        self._last_state = ""
        self.root.protocol("WM_DELETE_WINDOW", self.quit)
        self.root.bind_all("<Control-q>", lambda e: self.quit())
        self._show(self.login)
        self.login.shown()
        self.root.after(TICK_MS, self._tick)

    def _show(self, screen: ttk.Frame) -> None:
        if self.screen is not screen:
            if self.screen is not None:
                self.screen.pack_forget()
            screen.pack(fill="both", expand=True)
            self.screen = screen

    def _tick(self) -> None:
        # Reschedule first: an error in one tick must not stop the heartbeat.
        self.root.after(TICK_MS, self._tick)
        try:
            self.apply(self.client.tick())
        except Exception:  # noqa: BLE001 - logged; the window stays alive
            log.exception("tick failed")
        self._dump_state()

    def apply(self, changes: set[str]) -> None:
        client = self.client
        if client.phase == m.CLOSED:
            self.root.destroy()
            return
        if client.phase in (m.READY, m.RECONNECTING):
            if self.chat is None:
                self.chat = ChatScreen(self)
            chat = self.chat
            if self.screen is not chat:
                self._show(chat)
                self.login.password.delete(0, "end")  # not kept past the login attempt
                chat.refresh_users()
                chat.refresh_conversation()
                chat.sidebar.reset_cursor()
                chat.sidebar.focus_set()
                chat.sidebar.redraw()
            if changes & {"users", "rooms", "phase", "conversation"}:
                chat.refresh_users()
            if "conversation" in changes:
                chat.refresh_conversation()
            if changes & {"status", "phase", "draft"}:
                chat.refresh_status()
            sheet = chat.sheet
            if sheet is not None:
                if sheet.room is not None and sheet.room != client.room:
                    sheet.close()  # its room was left or closed
                elif changes & {"users", "rooms", "members", "phase"}:
                    sheet.refresh()
            if chat.entry.edit_modified():
                chat.save_draft()
        else:
            if self.chat is not None and self.chat.sheet is not None:
                self.chat.sheet.close()
            if self.screen is not self.login:
                self._show(self.login)
                self.login.shown()
            elif changes:
                self.login.sync()
                if client.phase == m.LOGGED_OUT and client.error:
                    self.login.password.delete(0, "end")
                    self.login.password.focus_set()
        if changes & {"trust", "phase", "status", "security"}:
            self._sync_dialog()
        if "bell" in changes:
            self.root.bell()
        self.root.title(self.title())

    def _sync_dialog(self) -> None:
        """Show the model's trust question, or the warning of a new refusal, over the window."""
        client = self.client
        question = client.trust_question
        dialog = self.dialog
        if isinstance(dialog, TrustDialog) and dialog.question is not question:
            dialog.close()  # answered, or the attempt was given up
        refusal = client.refusal
        if question is not None and self.dialog is None:
            self._open_dialog(TrustDialog(self, question))
        elif refusal is not None and refusal.details and refusal is not self._warned:
            self._warned = refusal
            self._open_dialog(CertificateWarning(self, refusal))

    def _open_dialog(self, dialog: Dialog) -> None:
        if self.dialog is not None:
            self.dialog.close()
        if self.chat is not None and self.chat.sheet is not None:
            self.chat.sheet.close()
        self.dialog = dialog
        dialog.open()

    def title(self) -> str:
        return window_title(self.client)

    def quit(self) -> None:
        if self.client.phase == m.CLOSED:
            return  # already quitting (close button and SIGTERM together)
        if self.chat is not None:
            self.chat.save_draft()
        self.client.close()  # sends exit: the user goes offline at once
        self._dump_state()
        self.root.destroy()

    def _dump_state(self) -> None:
        if not self.config.state_file:
            return
        state: dict[str, Any] = snapshot(self.client)
        state["title"] = self.title()
        state["screen"] = "chat" if self.screen is self.chat else "login"
        state["login_security"] = self.login.security.text
        state["login_security_details"] = self.login.security.details
        state["chat_security"] = self.chat.security.text if self.chat else None
        dialog = self.dialog
        state["dialog"] = dialog.kind if dialog else None
        state["dialog_text"] = dialog.text_for_state() if dialog else None
        try:
            focus = self.root.focus_get()
        except (KeyError, tk.TclError):
            focus = None
        names: dict[Any, str] = {}
        chat = self.chat
        if chat is not None:
            names = {
                chat.sidebar: "users",
                chat.entry: "entry",
                chat.send_button: "send",
                chat.new_room_button: "new_room_button",
                chat.browse_button: "browse_button",
                chat.members_button: "members_button",
                chat.leave_button: "leave_button",
            }
            state["composer"] = chat.entry.get("1.0", "end-1c")
            cursor = chat.sidebar.cursor_key
            state["sidebar"] = ":".join(cursor) if cursor else None
            state["header"] = chat.header_text()
            state["hint"] = chat.hint.cget("text")
            state["sheet"] = chat.sheet.kind if chat.sheet else None
            state["sheet_message"] = (
                chat.sheet.message.cget("text") if chat.sheet and chat.sheet.message else None
            )
            if chat.sheet is not None:
                names.update(chat.sheet.names)
        names.update({self.login.username: "username", self.login.password: "password"})
        names[self.login.button] = "login_button"
        if dialog is not None:
            names.update(dialog.names)
        state["focus"] = names.get(focus, str(focus) if focus else None)
        text = json.dumps(state, ensure_ascii=False, sort_keys=True)
        if text != self._last_state:
            self._last_state = text
            path = Path(self.config.state_file)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)  # readers never see half a file


def window_title(client: m.ChatClient) -> str:
    """``Team Chat — Alice — 5 unread, 1 mention``: unread from people and joined rooms."""
    if client.username is None or client.phase not in (m.READY, m.RECONNECTING):
        return APP_NAME
    parts = [APP_NAME, client.username]
    if client.total_unread:
        unread = f"{client.total_unread} unread"
        mentions = client.total_mentions
        if mentions:
            unread += f", {mentions} mention" + ("s" if mentions > 1 else "")
        parts.append(unread)
    if client.phase == m.RECONNECTING:
        parts.append("reconnecting…")
    return " — ".join(parts)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(config.log_level)
    try:
        app = ChatWindow(config)
    except tk.TclError as exc:
        print(f"chatapp: cannot open a window: {exc}", file=sys.stderr)
        return 2
    # SIGTERM (logout, ``docker stop``) quits like the close button: exit is sent.
    signal.signal(signal.SIGTERM, lambda *_: app.root.after(0, app.quit))
    app.root.mainloop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
