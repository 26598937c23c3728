"""Modal cards over the chat screen for rooms: new room, join a room, members, leave.

A sheet is a frame placed over the chat screen (not a second top-level
window, so it needs no window manager and shows in a screenshot of the
window). It keeps the keyboard to itself: Tab and Shift+Tab cycle through its
fields, Enter does its main action, Esc closes it and gives the focus back.
Each sheet asks the model and waits for the core's answer through the
``done(ok, message)`` callback of the model's room actions; nothing blocks.
The keyboard-keeping card itself (:class:`Card`) is also the base of the
certificate dialogs drawn over the whole window (``dialogs``).
"""

from __future__ import annotations

import tkinter as tk
from tkinter import font as tkfont
from tkinter import ttk
from typing import TYPE_CHECKING, Any

from . import model as m
from .widgets import ACCENT, MUTED, OFFLINE, ONLINE, SURFACE, TEXT

if TYPE_CHECKING:
    from .window import ChatScreen

BORDER = "#94a3b8"


class Card(tk.Frame):
    """A modal card drawn inside the window that keeps the keyboard until it closes."""

    #: Its name in the state dump (CHAT_DESKTOP_STATE_FILE).
    kind = "card"

    def __init__(
        self,
        master: tk.Misc,
        fonts: dict[str, tkfont.Font],
        title: str,
        heading_style: str = "Header.TLabel",
    ) -> None:
        super().__init__(master, bg=BORDER, padx=1, pady=1)
        self.fonts = fonts
        self.body = ttk.Frame(self, style="Sheet.TFrame", padding=(24, 20, 24, 18))
        self.body.pack(fill="both", expand=True)
        self.heading = ttk.Label(self.body, text=title, style=heading_style)
        self.heading.pack(anchor="w", pady=(0, 10))
        self.ring: list[tk.Misc] = []  # focusable fields in Tab order
        self.names: dict[tk.Misc, str] = {}  # field -> its name in the state dump
        self.message: ttk.Label | None = None
        self._previous: tk.Misc | None = None
        self.closed = False

    # -- building blocks ------------------------------------------------------------
    def field(self, widget: tk.Misc, name: str) -> tk.Misc:
        self.ring.append(widget)
        self.names[widget] = f"{self.kind}:{name}"
        return widget

    def add_message(self) -> None:
        self.message = ttk.Label(self.body, text="", style="Error.TLabel", wraplength=380)
        self.message.pack(anchor="w", fill="x", pady=(8, 0))

    def add_buttons(self, action: str, command: Any, style: str = "Accent.TButton") -> None:
        row = ttk.Frame(self.body, style="Sheet.TFrame")
        row.pack(fill="x", pady=(14, 0))
        self.cancel_button = ttk.Button(
            row, text="Cancel", style="Ghost.TButton", command=self.close
        )
        self.action_button = ttk.Button(row, text=action, style=style, command=command)
        self.cancel_button.pack(side="right")
        self.action_button.pack(side="right", padx=(0, 8))
        self.field(self.action_button, "action")
        self.field(self.cancel_button, "cancel")

    def say(self, text: str, error: bool = True) -> None:
        if self.message is not None and not self.closed:
            self.message.configure(text=text, style="Error.TLabel" if error else "Muted.TLabel")

    def busy(self, on: bool) -> None:
        if not self.closed:
            self.action_button.configure(state="disabled" if on else "normal")

    # -- life -----------------------------------------------------------------------
    def area(self) -> tk.Misc:
        """The widget the card is centred on."""
        return self.master

    def fallback_focus(self) -> tk.Misc | None:
        """Where the focus goes on close when the widget that had it is gone."""
        return None

    def forget_me(self) -> None:
        """Called once on close: drop the owner's reference to this card."""

    def open(self) -> None:
        self._previous = self.focus_get()
        self.place(in_=self.area(), relx=0.5, rely=0.45, anchor="center")
        self.lift()
        for widget in self._walk(self):
            widget.bind("<Escape>", self._escape, add="+")
        for i, widget in enumerate(self.ring):
            widget.bind("<Tab>", lambda e, i=i: self._cycle(i, 1))
            widget.bind("<Shift-Tab>", lambda e, i=i: self._cycle(i, -1))
            widget.bind("<ISO_Left_Tab>", lambda e, i=i: self._cycle(i, -1))
            if isinstance(widget, ttk.Button):
                widget.bind("<Return>", lambda e, w=widget: w.invoke() or "break")
                widget.bind("<KP_Enter>", lambda e, w=widget: w.invoke() or "break")
        self.refresh()
        self.first().focus_set()
        self.after_idle(self._grab)

    def first(self) -> tk.Misc:
        return self.ring[0]

    def _grab(self) -> None:
        # Clicks outside the card are ignored while it is open.
        if not self.closed:
            try:
                self.grab_set()
            except tk.TclError:  # not viewable yet: try again shortly
                self.after(50, self._grab)

    def _walk(self, widget: tk.Misc) -> list[tk.Misc]:
        found = [widget]
        for child in widget.winfo_children():
            found += self._walk(child)
        return found

    def _cycle(self, i: int, step: int) -> str:
        enabled = [w for w in self.ring if str(w.cget("state")) != "disabled"]
        here = self.ring[i]
        pos = enabled.index(here) if here in enabled else 0
        enabled[(pos + step) % len(enabled)].focus_set()
        return "break"

    def _escape(self, _event: Any) -> str:
        self.close()
        return "break"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.grab_release()
        except tk.TclError:
            pass
        self.forget_me()
        self.destroy()
        previous = self._previous
        if previous is not None and previous.winfo_exists() and previous.winfo_viewable():
            previous.focus_set()
        else:
            fallback = self.fallback_focus()
            if fallback is not None:
                fallback.focus_set()

    def refresh(self) -> None:
        """Redraw from the model (the window calls this when something changed)."""

    def focus_name(self, widget: Any) -> str | None:
        return self.names.get(widget)


class Sheet(Card):
    """A card over the chat screen's conversation pane, about rooms."""

    kind = "sheet"
    #: The room it is about, if any: it closes when that room is no longer open.
    room: str | None = None

    def __init__(self, screen: ChatScreen, title: str) -> None:
        super().__init__(screen, screen.app.fonts, title)
        self.screen = screen
        self.client: m.ChatClient = screen.app.client

    def area(self) -> tk.Misc:
        return self.screen.main

    def fallback_focus(self) -> tk.Misc | None:
        return self.screen.sidebar

    def forget_me(self) -> None:
        if self.screen.sheet is self:
            self.screen.sheet = None


class NewRoomSheet(Sheet):
    """Ctrl+N: a room's name, private or not, and people to add."""

    kind = "new_room"

    def __init__(self, screen: ChatScreen) -> None:
        super().__init__(screen, "New room")
        body = self.body
        ttk.Label(body, text="Name", style="Card.TLabel").pack(anchor="w")
        self.name = ttk.Entry(body, width=40)
        self.name.pack(fill="x", pady=(4, 2))
        ttk.Label(body, text="a-z, 0-9, - and _ · up to 40 characters", style="Muted.TLabel").pack(
            anchor="w", pady=(0, 10)
        )
        self.private = tk.BooleanVar(value=False)
        self.check = ttk.Checkbutton(
            body,
            text="Private: only its members see it",
            variable=self.private,
            style="Card.TCheckbutton",
        )
        self.check.pack(anchor="w", pady=(0, 10))
        ttk.Label(body, text="Add people (Space selects)", style="Card.TLabel").pack(anchor="w")
        self.people = sorted(self.client.users, key=str.casefold)
        self.list = tk.Listbox(
            body,
            selectmode="multiple",
            exportselection=False,
            height=max(3, min(6, len(self.people))),
            activestyle="dotbox",
            bd=1,
            relief="solid",
            highlightthickness=1,
            highlightcolor=ACCENT,
            selectbackground="#dbeafe",
            selectforeground=TEXT,
            font=self.fonts["body"],
        )
        for name in self.people:
            self.list.insert("end", name)
        self.list.pack(fill="x", pady=(4, 0))
        self.field(self.name, "name")
        self.field(self.check, "private")
        self.field(self.list, "members")
        self.add_message()
        self.add_buttons("Create", self.submit)
        self._room: str | None = None
        for widget in (self.name, self.check, self.list):
            widget.bind("<Return>", self.submit)
            widget.bind("<KP_Enter>", self.submit)
        self.name.bind("<Key>", lambda e: self.say(""), add="+")  # an old complaint goes
        if self.people:
            self.list.activate(0)

    def submit(self, _event: Any = None) -> str:
        name = self.name.get()
        members = [self.people[i] for i in self.list.curselection()]
        room = m.normalise_room_name(name)
        error = self.client.create_room(name, self.private.get(), members, done=self._done)
        if error:
            self.say(error)
            self.name.focus_set()
        else:
            self._room = room
            self.say("Creating…", error=False)
            self.busy(True)
        return "break"

    def _done(self, ok: bool, message: str | None) -> None:
        if ok:
            self.close()
            self.screen.open_item("room", self._room or "")
        else:
            self.busy(False)
            self.say(message or "The room was not created.")


class BrowseSheet(Sheet):
    """Ctrl+J: the public rooms you are not in; Enter joins one and opens it."""

    kind = "browse"

    def __init__(self, screen: ChatScreen) -> None:
        super().__init__(screen, "Join a room")
        body = self.body
        self.hint = ttk.Label(body, text="", style="Muted.TLabel", wraplength=380)
        self.hint.pack(anchor="w", pady=(0, 6))
        self.list = tk.Listbox(
            body,
            selectmode="browse",
            exportselection=False,
            height=8,
            width=44,
            activestyle="none",
            bd=1,
            relief="solid",
            highlightthickness=1,
            highlightcolor=ACCENT,
            selectbackground=ACCENT,
            selectforeground="white",
            font=self.fonts["body"],
        )
        self.list.pack(fill="x")
        self.list.bind("<Return>", self.join)
        self.list.bind("<KP_Enter>", self.join)
        self.list.bind("<Double-Button-1>", self.join)
        self.field(self.list, "rooms")
        self.add_message()
        self.add_buttons("Join", self.join)
        self.names_shown: list[str] = []
        self.client.refresh_rooms()  # member counts of rooms we are not in may be old

    def refresh(self) -> None:
        rooms = self.client.public_rooms_to_join()
        names = [r.name for r in rooms]
        keep = self.selected()
        self.list.delete(0, "end")
        for r in rooms:
            people = "1 member" if r.members == 1 else f"{r.members} members"
            self.list.insert("end", f"#{r.name}   ·   {people}")
        self.names_shown = names
        if names:
            i = names.index(keep) if keep in names else 0
            self.list.selection_clear(0, "end")
            self.list.selection_set(i)
            self.list.activate(i)
            self.list.see(i)
            self.hint.configure(text="Public rooms you are not in. ↑↓ choose · Enter joins.")
        else:
            self.hint.configure(
                text="There is no public room you have not joined. Ctrl+N creates a new one."
            )
        self.action_button.configure(state="normal" if names else "disabled")

    def selected(self) -> str | None:
        sel = self.list.curselection()
        if sel and sel[0] < len(self.names_shown):
            return self.names_shown[sel[0]]
        return None

    def join(self, _event: Any = None) -> str:
        name = self.selected()
        if name is None:
            return "break"
        error = self.client.join_room(name, done=lambda ok, msg: self._done(name, ok, msg))
        if error:
            self.say(error)
        else:
            self.say(f"Joining #{name}…", error=False)
            self.busy(True)
        return "break"

    def _done(self, name: str, ok: bool, message: str | None) -> None:
        if ok:
            self.close()
            self.screen.open_item("room", name)
        else:
            self.busy(False)
            self.say(message or "Could not join that room.")


class MembersSheet(Sheet):
    """Ctrl+M: who is in the open room, online first marked by a green dot; add someone."""

    kind = "members"

    def __init__(self, screen: ChatScreen, room: str) -> None:
        super().__init__(screen, f"Members of #{room}")
        self.room = room
        body = self.body
        self.summary = ttk.Label(body, text="", style="Muted.TLabel")
        self.summary.pack(anchor="w", pady=(0, 6))
        box = tk.Frame(body, bg="#cbd5e1", padx=1, pady=1)
        box.pack(fill="x")
        self.text = tk.Text(
            box, height=6, width=40, bd=0, highlightthickness=0, bg=SURFACE, fg=TEXT,
            font=self.fonts["body"], padx=10, pady=6, cursor="arrow", takefocus=0,
            spacing1=3, spacing3=3,
        )  # fmt: skip
        self.text.pack(fill="both")
        self.text.tag_configure("on", foreground=ONLINE)
        self.text.tag_configure("off", foreground=OFFLINE)
        self.text.tag_configure("muted", foreground=MUTED)
        ttk.Label(body, text="Add someone to this room", style="Card.TLabel").pack(
            anchor="w", pady=(12, 0)
        )
        row = ttk.Frame(body, style="Sheet.TFrame")
        row.pack(fill="x", pady=(4, 0))
        self.entry = ttk.Entry(row, width=28)
        self.entry.pack(side="left", fill="x", expand=True)
        self.add_button = ttk.Button(row, text="Add", style="Ghost.TButton", command=self.add)
        self.add_button.pack(side="left", padx=(8, 0))
        self.entry.bind("<Return>", self.add)
        self.entry.bind("<KP_Enter>", self.add)
        self.candidates = ttk.Label(body, text="", style="Muted.TLabel", wraplength=380)
        self.candidates.pack(anchor="w", pady=(4, 0))
        self.field(self.entry, "add")
        self.field(self.add_button, "add_button")
        self.add_message()
        row = ttk.Frame(body, style="Sheet.TFrame")
        row.pack(fill="x", pady=(14, 0))
        close = ttk.Button(row, text="Close", style="Ghost.TButton", command=self.close)
        close.pack(side="right")
        self.field(close, "close")
        error = self.client.load_members(room, done=self._loaded)
        if error:
            self.say(error)

    def _loaded(self, ok: bool, message: str | None) -> None:
        if not ok:
            self.say(message or "Could not list the members.")

    def refresh(self) -> None:
        members = self.client.member_list(self.room)
        room = self.client.rooms.get(self.room)
        t = self.text
        t.configure(state="normal")
        t.delete("1.0", "end")
        if members is None:
            t.insert("end", "Loading…", ("muted",))
            names: set[str] = set()
        else:
            names = {p["username"] for p in members}
            online = sorted(members, key=lambda p: (not p["online"], p["username"].casefold()))
            for i, person in enumerate(online):
                dot = "on" if person["online"] else "off"
                you = "  (you)" if person["username"] == self.client.username else ""
                t.insert("end", "●  ", (dot,), person["username"], (), you, ("muted",))
                state = "online" if person["online"] else "offline"
                t.insert("end", f"   {state}" + ("\n" if i < len(online) - 1 else ""), ("muted",))
        t.configure(state="disabled")
        if room is not None:
            count = "1 member" if room.members == 1 else f"{room.members} members"
            kind = "private" if room.private else "public"
            self.summary.configure(text=f"{count} · {kind} room")
        others = sorted((n for n in self.client.users if n not in names), key=str.casefold)
        self.candidates.configure(
            text=("Not in this room: " + ", ".join(others[:12])) if others and members else ""
        )

    def add(self, _event: Any = None) -> str:
        who = self.entry.get().strip()
        error = self.client.add_member(
            self.room, who, done=lambda ok, msg: self._added(who, ok, msg)
        )
        if error:
            self.say(error)
        else:
            self.say(f"Adding {who}…", error=False)
        return "break"

    def _added(self, who: str, ok: bool, message: str | None) -> None:
        if self.closed:
            return
        if ok:
            self.entry.delete(0, "end")
            self.say(f"{who} is in #{self.room}.", error=False)
        else:
            self.say(message or f"Could not add {who}.")


class LeaveSheet(Sheet):
    """Ctrl+L: leave the open room, after saying what that means."""

    kind = "leave"

    def __init__(self, screen: ChatScreen, room: str) -> None:
        super().__init__(screen, f"Leave #{room}?")
        self.room = room
        info = self.client.rooms.get(room)
        if info is not None and info.private:
            text = (
                "You will stop getting its messages. It is private: only a member can add you back."
            )
        else:
            text = (
                "You will stop getting its messages. You can join it again with "
                "Join a room (Ctrl+J)."
            )
        ttk.Label(self.body, text=text, style="Card.TLabel", wraplength=380).pack(anchor="w")
        self.add_message()
        self.add_buttons("Leave", self.leave, style="Danger.TButton")

    def leave(self, _event: Any = None) -> str:
        error = self.client.leave_room(self.room, done=self._done)
        if error:
            self.say(error)
        else:
            self.busy(True)
        return "break"

    def _done(self, ok: bool, message: str | None) -> None:
        if ok:
            self.close()
            self.screen.sidebar.focus_set()
        else:
            self.busy(False)
            self.say(message or "Could not leave the room.")
