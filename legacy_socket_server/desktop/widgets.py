"""Custom Tk widgets and the look: a keyboard-driven user list and the message view."""

from __future__ import annotations

import tkinter as tk
from collections.abc import Callable, Sequence
from datetime import datetime
from tkinter import font as tkfont
from tkinter import ttk
from typing import Any

from .conversation import User

# One palette, so the look is changed in one place.
ACCENT = "#2563eb"
ACCENT_DARK = "#1d4ed8"
SIDEBAR = "#1e293b"
SIDEBAR_HOVER = "#334155"
SIDEBAR_TEXT = "#f1f5f9"
SIDEBAR_MUTED = "#94a3b8"
ONLINE = "#22c55e"
OFFLINE = "#64748b"
BADGE = "#ef4444"
SURFACE = "#ffffff"
APP_BG = "#f1f5f9"
TEXT = "#0f172a"
MUTED = "#64748b"
MINE_BG = "#dbeafe"
THEIRS_BG = "#f1f5f9"
ERROR = "#dc2626"
WARN_BG = "#fef3c7"
WARN_TEXT = "#92400e"

_FAMILIES = ("Inter", "Segoe UI", "Noto Sans", "Ubuntu", "DejaVu Sans", "Liberation Sans")


def apply_theme(root: tk.Tk) -> dict[str, tkfont.Font]:
    """Configure ttk (clam, flat, padded) and return the named fonts the view uses."""
    available = set(tkfont.families(root))
    family = next((f for f in _FAMILIES if f in available), "TkDefaultFont")
    for name in ("TkDefaultFont", "TkTextFont", "TkMenuFont"):
        tkfont.nametofont(name).configure(family=family, size=10)
    fonts = {
        "body": tkfont.Font(root, family=family, size=10),
        "bold": tkfont.Font(root, family=family, size=10, weight="bold"),
        "small": tkfont.Font(root, family=family, size=8),
        "title": tkfont.Font(root, family=family, size=18, weight="bold"),
        "header": tkfont.Font(root, family=family, size=13, weight="bold"),
        "badge": tkfont.Font(root, family=family, size=8, weight="bold"),
        "pad": tkfont.Font(root, family=family, size=4),
    }
    style = ttk.Style(root)
    style.theme_use("clam")
    root.configure(bg=APP_BG)
    style.configure(".", background=APP_BG, foreground=TEXT, font=fonts["body"])
    style.configure("Card.TFrame", background=SURFACE)
    style.configure("Surface.TFrame", background=SURFACE)
    style.configure("Card.TLabel", background=SURFACE, foreground=TEXT)
    style.configure("Muted.TLabel", background=SURFACE, foreground=MUTED, font=fonts["small"])
    style.configure("Title.TLabel", background=SURFACE, foreground=TEXT, font=fonts["title"])
    style.configure("Header.TLabel", background=SURFACE, foreground=TEXT, font=fonts["header"])
    style.configure("Error.TLabel", background=SURFACE, foreground=ERROR)
    style.configure("Banner.TLabel", background=WARN_BG, foreground=WARN_TEXT, padding=(12, 6))
    style.configure("Side.TFrame", background=SIDEBAR)
    style.configure("Side.TLabel", background=SIDEBAR, foreground=SIDEBAR_TEXT)
    style.configure("SideMuted.TLabel", background=SIDEBAR, foreground=SIDEBAR_MUTED)
    style.configure(
        "SideTitle.TLabel", background=SIDEBAR, foreground="white", font=fonts["header"]
    )
    style.configure(
        "TEntry", fieldbackground=SURFACE, bordercolor="#cbd5e1", lightcolor="#cbd5e1", padding=6
    )
    style.map("TEntry", bordercolor=[("focus", ACCENT)], lightcolor=[("focus", ACCENT)])
    style.configure(
        "Accent.TButton",
        background=ACCENT,
        foreground="white",
        bordercolor=ACCENT,
        lightcolor=ACCENT,
        darkcolor=ACCENT,
        focuscolor="white",
        padding=(16, 7),
        font=fonts["bold"],
    )
    style.map(
        "Accent.TButton",
        background=[("disabled", "#93c5fd"), ("pressed", ACCENT_DARK), ("active", ACCENT_DARK)],
        foreground=[("disabled", "#eff6ff")],
        bordercolor=[("disabled", "#93c5fd")],
        lightcolor=[("disabled", "#93c5fd")],
        darkcolor=[("disabled", "#93c5fd")],
    )
    # A slim scrollbar without arrow buttons, like current desktop toolkits.
    style.layout(
        "Slim.Vertical.TScrollbar",
        [("Vertical.Scrollbar.trough", {"sticky": "ns", "children": [
            ("Vertical.Scrollbar.thumb", {"expand": "1", "sticky": "nswe"})]})],
    )  # fmt: skip
    style.configure(
        "Slim.Vertical.TScrollbar", troughcolor=SURFACE, background="#cbd5e1",
        bordercolor=SURFACE, lightcolor="#cbd5e1", darkcolor="#cbd5e1", gripcount=0,
        arrowsize=8,
    )  # fmt: skip
    style.map("Slim.Vertical.TScrollbar", background=[("active", "#94a3b8")])
    return fonts


class UserList(tk.Canvas):
    """Every other user: online dot, name, unread badge. Up/Down move, Enter opens."""

    ROW = 44

    def __init__(
        self, master: tk.Misc, fonts: dict[str, tkfont.Font], on_open: Callable[[str], None]
    ) -> None:
        super().__init__(master, bg=SIDEBAR, highlightthickness=0, bd=0, takefocus=1)
        self.fonts = fonts
        self.on_open = on_open
        self.users: list[User] = []
        self.cursor = 0
        self.open_name: str | None = None
        self.stale = False  # presence unknown while reconnecting: every dot grey
        for seq, handler in (
            ("<Up>", lambda e: self.move(-1)),
            ("<Down>", lambda e: self.move(1)),
            ("<Home>", lambda e: self.move(-len(self.users))),
            ("<End>", lambda e: self.move(len(self.users))),
            ("<Return>", self._open_cursor),
            ("<KP_Enter>", self._open_cursor),
            ("<space>", self._open_cursor),
            ("<Button-1>", self._click),
            ("<FocusIn>", lambda e: self.redraw()),
            ("<FocusOut>", lambda e: self.redraw()),
            ("<Configure>", lambda e: self.redraw()),
            ("<MouseWheel>", lambda e: self.yview_scroll(-1 if e.delta > 0 else 1, "units")),
            ("<Button-4>", lambda e: self.yview_scroll(-1, "units")),
            ("<Button-5>", lambda e: self.yview_scroll(1, "units")),
        ):
            self.bind(seq, handler)
        self.configure(yscrollincrement=self.ROW)

    @property
    def cursor_name(self) -> str | None:
        return self.users[self.cursor].username if self.users else None

    def set_users(self, users: Sequence[User], open_name: str | None, stale: bool = False) -> None:
        # The cursor follows its user when the order changes (presence re-sorts the list).
        keep = self.cursor_name
        self.users = list(users)
        self.open_name = open_name
        self.stale = stale
        names = [u.username for u in self.users]
        self.cursor = names.index(keep) if keep in names else 0
        self.redraw()

    def move(self, step: int) -> str:
        if self.users:
            self.cursor = max(0, min(len(self.users) - 1, self.cursor + step))
            self.redraw()
            self._scroll_to_cursor()
        return "break"

    def _open_cursor(self, _event: Any = None) -> str:
        if self.users:
            self.on_open(self.users[self.cursor].username)
        return "break"

    def _click(self, event: tk.Event) -> None:
        row = int(self.canvasy(event.y) // self.ROW)
        if 0 <= row < len(self.users):
            self.cursor = row
            self.focus_set()
            self._open_cursor()

    def _scroll_to_cursor(self) -> None:
        height = max(1, self.winfo_height())
        top = self.canvasy(0)
        y = self.cursor * self.ROW
        if y < top or y + self.ROW > top + height:
            self.yview_moveto(max(0, y - height / 2) / max(1, len(self.users) * self.ROW))

    def redraw(self) -> None:
        self.delete("all")
        width = max(self.winfo_width(), 180)
        focused = self.focus_get() is self
        for i, user in enumerate(self.users):
            y0 = i * self.ROW
            mid = y0 + self.ROW // 2
            is_open = user.username == self.open_name
            if is_open:
                self.create_rectangle(6, y0 + 2, width - 6, y0 + self.ROW - 2, fill=ACCENT, width=0)
            elif i == self.cursor and focused:
                self.create_rectangle(
                    6, y0 + 2, width - 6, y0 + self.ROW - 2, fill=SIDEBAR_HOVER, width=0
                )
            if i == self.cursor and focused:
                self.create_rectangle(
                    7, y0 + 3, width - 7, y0 + self.ROW - 3, outline="#93c5fd", width=2
                )
            dot = ONLINE if user.online and not self.stale else OFFLINE
            self.create_oval(20, mid - 5, 30, mid + 5, fill=dot, outline=dot)
            colour = SIDEBAR_TEXT if user.online or is_open else SIDEBAR_MUTED
            font = self.fonts["bold"] if user.unread else self.fonts["body"]
            self.create_text(42, mid, text=user.username, anchor="w", fill=colour, font=font)
            if user.unread:
                label = str(user.unread) if user.unread < 100 else "99+"
                half = max(0, self.fonts["badge"].measure(label) // 2 - 3)
                x = width - 24 - half
                self.create_line(
                    x - half, mid, x + half, mid, width=18, capstyle="round", fill=BADGE
                )
                self.create_text(x, mid, text=label, fill="white", font=self.fonts["badge"])
        self.configure(scrollregion=(0, 0, width, len(self.users) * self.ROW))


def format_ts(ts: str) -> str:
    """Local ``HH:MM`` for today, else ``24 Nov HH:MM``."""
    try:
        when = datetime.fromisoformat(ts).astimezone()
    except (TypeError, ValueError):
        return ""
    if when.date() == datetime.now().astimezone().date():
        return when.strftime("%H:%M")
    return when.strftime("%d %b %H:%M")


#: Messages from one sender this close together share one header, as in most chat apps.
GROUP_SECONDS = 300


def continues(prev: dict[str, Any], m: dict[str, Any]) -> bool:
    """True if ``m`` belongs to ``prev``'s run (same sender, within GROUP_SECONDS)."""
    if prev["from"] != m["from"] or m.get("pending") or prev.get("pending"):
        return False
    try:
        gap = datetime.fromisoformat(m["ts"]) - datetime.fromisoformat(prev["ts"])
    except (KeyError, TypeError, ValueError):
        return False
    return abs(gap.total_seconds()) <= GROUP_SECONDS


class MessageView(ttk.Frame):
    """The conversation: a read-only Text, one tinted block per message.

    Only the difference to what is shown is redrawn: new messages are
    appended, an older page is inserted on top (keeping the view where it
    was), and anything else (a pending message confirmed) redraws from the
    first changed message. Each message starts at a mark named by its key.
    """

    def __init__(
        self, master: tk.Misc, fonts: dict[str, tkfont.Font], on_top: Callable[[], Any]
    ) -> None:
        super().__init__(master, style="Surface.TFrame")
        self.on_top = on_top
        self.text = tk.Text(
            self,
            wrap="word",
            bd=0,
            highlightthickness=0,
            bg=SURFACE,
            fg=TEXT,
            font=fonts["body"],
            padx=16,
            pady=12,
            cursor="arrow",
            takefocus=0,
        )
        bar = ttk.Scrollbar(
            self, orient="vertical", command=self.text.yview, style="Slim.Vertical.TScrollbar"
        )
        self.text.configure(yscrollcommand=lambda a, b: (bar.set(a, b), self._scrolled(a)))
        bar.pack(side="right", fill="y")
        self.text.pack(side="left", fill="both", expand=True)
        # Bubbles from tag backgrounds: the inner margin takes the tag's tint
        # (padding), the outer margin is painted white (margin colours, Tk 8.6.6+).
        wide, pad = 120, 14
        t = self.text
        t.tag_configure(
            "mine", background=MINE_BG, justify="right", lmargin1=wide, lmargin2=wide,
            lmargincolor=SURFACE, rmargin=pad,
        )  # fmt: skip
        t.tag_configure(
            "theirs", background=THEIRS_BG, lmargin1=pad, lmargin2=pad, rmargin=wide,
            rmargincolor=SURFACE,
        )  # fmt: skip
        t.tag_configure("name", font=fonts["bold"], spacing1=8)
        t.tag_configure("time", font=fonts["small"], foreground=MUTED)
        t.tag_configure("body", spacing1=2)
        t.tag_configure("pad", font=fonts["pad"])
        t.tag_configure("pending", foreground=MUTED)
        t.tag_configure("gap", font=fonts["pad"])
        t.tag_configure("notice", foreground=MUTED, justify="center", font=fonts["small"])
        for seq in ("<Button-4>", "<MouseWheel>"):
            t.bind(seq, lambda e: self.after_idle(self._scrolled, t.yview()[0]), add="+")
        self.shown: list[str] = []
        self.me: str | None = None
        self._state_normal()
        t.configure(state="disabled")

    def _state_normal(self) -> None:
        self.text.configure(state="normal")

    def _scrolled(self, first: str | float) -> None:
        if float(first) <= 0.0:
            self.on_top()

    def scroll(self, pages: int) -> None:
        self.text.yview_scroll(pages, "pages")
        self._scrolled(self.text.yview()[0])

    def clear(self, notice: str = "") -> None:
        t = self.text
        t.configure(state="normal")
        t.delete("1.0", "end")
        for key in self.shown:
            t.mark_unset(f"m:{key}")
        self.shown = []
        if notice:
            t.insert("end", "\n\n\n" + notice, ("notice",))
        t.configure(state="disabled")

    @staticmethod
    def key(m: dict[str, Any]) -> str:
        return f"p{m['client_msg_id']}" if m.get("pending") else str(m["id"])

    def render(self, messages: list[dict[str, Any]], me: str, peer: str) -> None:
        if not messages and not self.shown:
            self.clear(f"No messages with {peer} yet. Say hello!")
            return
        if not self.shown:
            self.clear()
        t = self.text
        keys = [self.key(m) for m in messages]
        at_bottom = t.yview()[1] >= 0.999
        t.configure(state="normal")
        n_old = len(self.shown)
        if n_old and len(keys) > n_old and keys[-n_old:] == self.shown:
            # An older page: insert above, then put the old top line back at the top.
            t.mark_set("viewtop", t.index("@0,0"))
            n_new = len(keys) - n_old
            for i in reversed(range(n_new)):
                self._insert("1.0", messages[i], keys[i], me, messages[i - 1] if i else None)
            if continues(messages[n_new - 1], messages[n_new]):
                # The old first message now follows its sender's run: drop its header line.
                first = f"m:{keys[n_new]}"
                start = t.index(first)
                t.delete(first, f"{first} lineend +1c")
                side = "mine" if messages[n_new]["from"] == me else "theirs"
                t.insert(start, "\n", (side, "pad"))
                t.mark_set(first, start)
            t.yview("viewtop")
        else:
            same = 0
            while same < min(n_old, len(keys)) and keys[same] == self.shown[same]:
                same += 1
            if same < n_old:
                t.delete(f"m:{self.shown[same]}", "end")
                for k in self.shown[same:]:
                    t.mark_unset(f"m:{k}")
            for i in range(same, len(keys)):
                self._insert("end", messages[i], keys[i], me, messages[i - 1] if i else None)
            own_new = any(m["from"] == me for m in messages[same:])
            if at_bottom or own_new or not n_old:
                t.see("end")
        self.shown = keys
        t.configure(state="disabled")

    def _insert(
        self, index: str, m: dict[str, Any], key: str, me: str, prev: dict[str, Any] | None
    ) -> None:
        t = self.text
        start = t.index("end-1c" if index == "end" else index)
        mine = m["from"] == me
        side = "mine" if mine else "theirs"
        when = "sending…" if m.get("pending") else format_ts(m.get("ts", ""))
        extra = ("pending",) if m.get("pending") else ()
        header: tuple[Any, ...] = ("\n", (side, "pad"))  # a run's later bubbles: padding only
        if prev is None or not continues(prev, m):
            header = ("You" if mine else m["from"], (side, "name"), f"   {when}\n", (side, "time"))
        t.insert(
            index,
            *header,
            m["text"] + "\n",
            (side, "body", *extra),
            "\n",
            (side, "pad"),
            "\n",
            ("gap",),
        )
        t.mark_set(f"m:{key}", start)  # right gravity: an older page inserted here pushes it
