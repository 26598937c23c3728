"""Custom Tk widgets and the look: the keyboard-driven sidebar (rooms and people), the
message view, and the small pieces that say whether a connection is encrypted (a
padlock mark with a tooltip)."""

from __future__ import annotations

import re
import tkinter as tk
import zlib
from collections.abc import Callable, Sequence
from datetime import datetime
from tkinter import font as tkfont
from tkinter import ttk
from typing import Any

from .conversation import Room, User

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
#: An encrypted, trusted connection (the padlock and its line).
SECURE = "#15803d"
WARN_BG = "#fef3c7"
WARN_TEXT = "#92400e"
#: Unread mentions in the sidebar, and messages that mention you.
MENTION = "#d97706"
MENTION_BG = "#fef3c7"
MENTION_TEXT = "#b45309"
#: Sender names in rooms, picked by name so a person keeps one colour.
NAME_COLOURS = ("#1d4ed8", "#047857", "#7c3aed", "#be185d", "#0e7490", "#b45309", "#4d7c0f")

_FAMILIES = ("Inter", "Segoe UI", "Noto Sans", "Ubuntu", "DejaVu Sans", "Liberation Sans")
#: For fingerprints: every digit the same width, so two can be compared column by column.
_MONO_FAMILIES = ("JetBrains Mono", "DejaVu Sans Mono", "Noto Sans Mono", "Liberation Mono",
                  "Consolas", "Menlo")  # fmt: skip


def apply_theme(root: tk.Tk) -> dict[str, tkfont.Font]:
    """Configure ttk (clam, flat, padded) and return the named fonts the view uses."""
    available = set(tkfont.families(root))
    family = next((f for f in _FAMILIES if f in available), "TkDefaultFont")
    mono = next((f for f in _MONO_FAMILIES if f in available), "TkFixedFont")
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
        "mono": tkfont.Font(root, family=mono, size=9),
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
    style.configure("Danger.TLabel", background=SURFACE, foreground=ERROR, font=fonts["header"])
    style.configure("Secure.TLabel", background=SURFACE, foreground=SECURE, font=fonts["small"])
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
    # Buttons on the dark sidebar, quiet buttons on white, and a red one for leaving.
    style.configure(
        "Side.TButton", background=SIDEBAR_HOVER, foreground=SIDEBAR_TEXT,
        bordercolor=SIDEBAR_HOVER, lightcolor=SIDEBAR_HOVER, darkcolor=SIDEBAR_HOVER,
        focuscolor=SIDEBAR_TEXT, padding=(8, 5), font=fonts["small"],
    )  # fmt: skip
    style.map(
        "Side.TButton",
        background=[("pressed", ACCENT_DARK), ("active", "#475569")],
        bordercolor=[("focus", "#93c5fd")],
    )
    style.configure(
        "Ghost.TButton", background=SURFACE, foreground=TEXT, bordercolor="#cbd5e1",
        lightcolor=SURFACE, darkcolor=SURFACE, focuscolor=ACCENT, padding=(10, 4),
        font=fonts["small"],
    )  # fmt: skip
    style.map(
        "Ghost.TButton",
        background=[("pressed", "#e2e8f0"), ("active", APP_BG)],
        bordercolor=[("focus", ACCENT)],
    )
    style.configure(
        "Danger.TButton", background=ERROR, foreground="white", bordercolor=ERROR,
        lightcolor=ERROR, darkcolor=ERROR, focuscolor="white", padding=(16, 7),
        font=fonts["bold"],
    )  # fmt: skip
    style.map("Danger.TButton", background=[("pressed", "#991b1b"), ("active", "#b91c1c")])
    style.configure("Sheet.TFrame", background=SURFACE)
    style.configure(
        "Card.TCheckbutton", background=SURFACE, foreground=TEXT, focuscolor=ACCENT,
        indicatorbackground=SURFACE,
    )  # fmt: skip
    style.map("Card.TCheckbutton", background=[("active", SURFACE)])
    style.configure("Room.TLabel", background=SURFACE, foreground=MUTED, font=fonts["header"])
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


class Sidebar(tk.Canvas):
    """Two sections, Rooms (joined first) and People, in one keyboard list.

    Up/Down move through both sections (crossing from Rooms into People and
    back, skipping the section headings), Home/End jump to the ends, Enter,
    space or a click open the row. A room shows ``#`` (a padlock when
    private), its unread count and an ``@`` mark when unread messages mention
    you; a person shows an online dot and their unread count. Rows are keyed
    ``("room", name)`` / ``("user", name)``; the cursor follows its row when
    the lists re-sort.
    """

    ROW = 40
    HEAD = 30

    def __init__(
        self, master: tk.Misc, fonts: dict[str, tkfont.Font], on_open: Callable[[str, str], None]
    ) -> None:
        super().__init__(master, bg=SIDEBAR, highlightthickness=0, bd=0, takefocus=1)
        self.fonts = fonts
        self.on_open = on_open
        self.rows: list[tuple[str, Any]] = []  # ("head"|"note", text) or ("room"|"user", item)
        self.tops: list[int] = []
        self.cursor = -1  # index into rows of a selectable row, or -1
        self.open_key: tuple[str, str] | None = None
        self.stale = False  # presence unknown while reconnecting: every dot grey
        for seq, handler in (
            ("<Up>", lambda e: self.move(-1)),
            ("<Down>", lambda e: self.move(1)),
            ("<Home>", lambda e: self.move(-len(self.rows))),
            ("<End>", lambda e: self.move(len(self.rows))),
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
        self.configure(yscrollincrement=self.HEAD)

    @staticmethod
    def key(row: tuple[str, Any]) -> tuple[str, str] | None:
        kind, item = row
        if kind == "room":
            return ("room", item.name)
        if kind == "user":
            return ("user", item.username)
        return None

    @property
    def cursor_key(self) -> tuple[str, str] | None:
        return self.key(self.rows[self.cursor]) if 0 <= self.cursor < len(self.rows) else None

    def _selectable(self) -> list[int]:
        return [i for i, (kind, _) in enumerate(self.rows) if kind in ("room", "user")]

    def set_items(
        self,
        rooms: Sequence[Room],
        users: Sequence[User],
        open_key: tuple[str, str] | None,
        stale: bool = False,
    ) -> None:
        keep, was = self.cursor_key, self.cursor
        rows: list[tuple[str, Any]] = [("head", "ROOMS")]
        rows += [("room", r) for r in rooms] or [("note", "No rooms yet · Ctrl+N creates one")]
        rows.append(("head", "PEOPLE"))
        rows += [("user", u) for u in users] or [("note", "Nobody else here yet")]
        self.rows = rows
        self.tops, y = [], 0
        for kind, _ in rows:
            self.tops.append(y)
            y += self.ROW if kind in ("room", "user") else self.HEAD
        self.open_key = open_key
        self.stale = stale
        keys = [self.key(r) for r in rows]
        if keep in keys:
            self.cursor = keys.index(keep)
        else:  # its row went away (a room left): the nearest row stays under the cursor
            sel = self._selectable()
            self.cursor = min(sel, key=lambda i: abs(i - was)) if sel and was >= 0 else -1
        self.redraw()

    def reset_cursor(self) -> None:
        """Put the cursor on the first row with unread messages, else on the first person."""
        sel = self._selectable()
        unread = [i for i in sel if self.rows[i][1].unread]
        people = [i for i in sel if self.rows[i][0] == "user"]
        self.cursor = (unread or people or sel or [-1])[0]
        self.redraw()

    def move(self, step: int) -> str:
        sel = self._selectable()
        if sel:
            pos = sel.index(self.cursor) if self.cursor in sel else 0
            self.cursor = sel[max(0, min(len(sel) - 1, pos + step))]
            self.redraw()
            self._scroll_to_cursor()
        return "break"

    def _open_cursor(self, _event: Any = None) -> str:
        key = self.cursor_key
        if key is not None:
            self.on_open(*key)
        return "break"

    def _click(self, event: tk.Event) -> None:
        y = self.canvasy(event.y)
        for i in reversed(range(len(self.rows))):
            if self.tops[i] <= y:
                if self.key(self.rows[i]) is not None:
                    self.cursor = i
                    self.focus_set()
                    self._open_cursor()
                return

    def _height(self, i: int) -> int:
        return self.ROW if self.rows[i][0] in ("room", "user") else self.HEAD

    def _scroll_to_cursor(self) -> None:
        if self.cursor < 0:
            return
        height = max(1, self.winfo_height())
        top = self.canvasy(0)
        y0 = self.tops[self.cursor]
        y1 = y0 + self._height(self.cursor)
        if self.cursor == self._selectable()[0]:
            y0 = 0  # show the first section's heading too
        total = max(1, self.tops[-1] + self._height(len(self.rows) - 1))
        if y0 < top or y1 > top + height:
            self.yview_moveto(max(0, y0 - height / 2) / total)

    def _pill(self, right: float, mid: int, label: str, colour: str) -> float:
        """A rounded badge ending at ``right``; returns its left edge."""
        half = max(0, self.fonts["badge"].measure(label) // 2 - 3)
        x = right - 9 - half
        self.create_line(x - half, mid, x + half, mid, width=18, capstyle="round", fill=colour)
        self.create_text(x, mid, text=label, fill="white", font=self.fonts["badge"])
        return x - half - 9

    def _lock(self, x: int, mid: int, colour: str) -> None:
        draw_lock(self, x, mid, colour)

    def redraw(self) -> None:
        self.delete("all")
        width = max(self.winfo_width(), 180)
        focused = self.focus_get() is self
        for i, (kind, item) in enumerate(self.rows):
            y0 = self.tops[i]
            if kind in ("head", "note"):
                font = self.fonts["badge"] if kind == "head" else self.fonts["small"]
                y = y0 + self.HEAD // 2 + 3
                self.create_text(18, y, text=item, anchor="w", fill=SIDEBAR_MUTED, font=font)
                continue
            mid = y0 + self.ROW // 2
            is_open = self.key((kind, item)) == self.open_key
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
            right = width - 15
            if kind == "room":
                active = item.joined or is_open
                colour = SIDEBAR_TEXT if active else SIDEBAR_MUTED
                if item.private:
                    self._lock(20, mid, colour)
                else:
                    self.create_text(25, mid, text="#", fill=colour, font=self.fonts["bold"])
                name, bold = item.name, item.unread > 0
                if not item.joined:
                    self.create_text(
                        right, mid, text="join", anchor="e", fill=SIDEBAR_MUTED,
                        font=self.fonts["small"],
                    )  # fmt: skip
            else:
                dot = ONLINE if item.online and not self.stale else OFFLINE
                self.create_oval(20, mid - 5, 30, mid + 5, fill=dot, outline=dot)
                colour = SIDEBAR_TEXT if item.online or is_open else SIDEBAR_MUTED
                name, bold = item.username, item.unread > 0
            font = self.fonts["bold"] if bold else self.fonts["body"]
            self.create_text(42, mid, text=name, anchor="w", fill=colour, font=font)
            if item.unread:
                label = str(item.unread) if item.unread < 100 else "99+"
                right = self._pill(right, mid, label, BADGE)
            if kind == "room" and item.mentions:
                label = "@" if item.mentions == 1 else f"@{min(item.mentions, 99)}"
                self._pill(right, mid, label, MENTION)
        total = self.tops[-1] + self._height(len(self.rows) - 1) if self.rows else 0
        self.configure(scrollregion=(0, 0, width, total))


def draw_lock(canvas: tk.Canvas, x: int, mid: int, colour: str, open_: bool = False) -> None:
    """A 10 px padlock at ``x`` centred on ``mid``; ``open_`` lifts the shackle (not encrypted)."""
    lift = 4 if open_ else 0
    canvas.create_arc(x + 1, mid - 7 - lift, x + 9, mid + 1 - lift, start=0, extent=180,
                      style="arc", outline=colour, width=2)  # fmt: skip
    if open_:  # one leg of the raised shackle still in the body
        canvas.create_line(x + 8, mid - 3 - lift, x + 8, mid - 1, fill=colour, width=2)
    canvas.create_rectangle(x, mid - 2, x + 10, mid + 6, fill=colour, outline=colour)


class LockMark(ttk.Frame):
    """A padlock and a line of text (``Encrypted (TLSv1.3) · sha256:ab12…``); the full
    details (whole fingerprint, how it was trusted) show in a tooltip."""

    def __init__(self, master: tk.Misc, background: str, label_style: str) -> None:
        super().__init__(master, style="Side.TFrame" if background == SIDEBAR else "Card.TFrame")
        self.background = background
        self.icon = tk.Canvas(self, width=12, height=16, bg=background, highlightthickness=0)
        self.icon.pack(side="left", padx=(0, 6))
        self.label = ttk.Label(self, text="", style=label_style)
        self.label.pack(side="left")
        self.details = ""
        self.tooltip = Tooltip(self.label, lambda: self.details)
        Tooltip(self.icon, lambda: self.details)

    def show(self, text: str, details: str, encrypted: bool, colour: str) -> None:
        self.label.configure(text=text)
        self.details = details
        self.icon.delete("all")
        draw_lock(self.icon, 1, 9, colour, open_=not encrypted)

    @property
    def text(self) -> str:
        return str(self.label.cget("text"))


class Tooltip:
    """A note next to ``widget`` while the pointer rests on it (``text()`` when shown)."""

    def __init__(self, widget: tk.Misc, text: Callable[[], str]) -> None:
        self.widget = widget
        self.text = text
        self.tip: tk.Toplevel | None = None
        widget.bind("<Enter>", lambda e: self.show(), add="+")
        widget.bind("<Leave>", lambda e: self.hide(), add="+")

    def show(self) -> None:
        text = self.text()
        if not text or self.tip is not None:
            return
        tip = self.tip = tk.Toplevel(self.widget)
        tip.wm_overrideredirect(True)  # no title bar: a note, not a window
        x = self.widget.winfo_rootx()
        y = self.widget.winfo_rooty() + self.widget.winfo_height() + 4
        tip.wm_geometry(f"+{x}+{y}")
        tk.Label(
            tip, text=text, bg=TEXT, fg="white", padx=8, pady=4, justify="left", wraplength=520
        ).pack()

    def hide(self) -> None:
        if self.tip is not None:
            self.tip.destroy()
            self.tip = None


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
        # Created after "theirs", so its tint wins where both apply.
        t.tag_configure("mention", background=MENTION_BG, rmargincolor=SURFACE)
        t.tag_configure("mention_name", foreground=MENTION_TEXT, font=fonts["bold"])
        t.tag_configure("mention_note", foreground=MENTION_TEXT, font=fonts["badge"])
        for i, colour in enumerate(NAME_COLOURS):
            t.tag_configure(f"name{i}", foreground=colour)
        for seq in ("<Button-4>", "<MouseWheel>"):
            t.bind(seq, lambda e: self.after_idle(self._scrolled, t.yview()[0]), add="+")
        self.shown: list[str] = []
        self.me: str | None = None
        self._mentions: Callable[[dict[str, Any]], bool] | None = None
        self._colour_names = False
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

    def render(
        self,
        messages: list[dict[str, Any]],
        me: str,
        empty: str,
        mentions: Callable[[dict[str, Any]], bool] | None = None,
        colour_names: bool = False,
    ) -> None:
        """Show ``messages`` (``empty`` if none). In a room, ``mentions`` tells which
        messages call ``me`` (highlighted) and ``colour_names`` gives each sender a colour."""
        self.me = me
        self._mentions = mentions
        self._colour_names = colour_names
        if not messages and not self.shown:
            self.clear(empty)
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
                t.insert(start, "\n", (*self._tags(messages[n_new], me), "pad"))
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

    def _tags(self, m: dict[str, Any], me: str) -> tuple[str, ...]:
        """The block tags of one message: its side, and ``mention`` if it calls you."""
        if m["from"] == me:
            return ("mine",)
        if self._mentions is not None and self._mentions(m):
            return ("theirs", "mention")
        return ("theirs",)

    def _name_tag(self, name: str) -> str:
        if not self._colour_names:
            return "name"
        tag = f"name{zlib.crc32(name.encode()) % len(NAME_COLOURS)}"
        return tag

    def _insert(
        self, index: str, m: dict[str, Any], key: str, me: str, prev: dict[str, Any] | None
    ) -> None:
        t = self.text
        start = t.index("end-1c" if index == "end" else index)
        mine = m["from"] == me
        block = self._tags(m, me)
        when = "sending…" if m.get("pending") else format_ts(m.get("ts", ""))
        extra = ("pending",) if m.get("pending") else ()
        header: tuple[Any, ...] = ("\n", (*block, "pad"))  # a run's later bubbles: padding only
        if prev is None or not continues(prev, m):
            name_tags = (*block, "name") if mine else (*block, "name", self._name_tag(m["from"]))
            header = ("You" if mine else m["from"], name_tags, f"   {when}\n", (*block, "time"))
        if "mention" in block:
            header = (*header, "@ mentions you\n", (*block, "mention_note"))
        body: list[Any] = []
        text = m["text"]
        pos = 0
        if "mention" in block:
            for hit in _mention_re(me).finditer(text):
                body += [text[pos : hit.start()], (*block, "body", *extra)]
                body += [hit.group(0), (*block, "body", "mention_name")]
                pos = hit.end()
        body += [text[pos:] + "\n", (*block, "body", *extra)]
        t.insert(index, *header, *body, "\n", (*block, "pad"), "\n", ("gap",))
        t.mark_set(f"m:{key}", start)  # right gravity: an older page inserted here pushes it


def _mention_re(me: str) -> re.Pattern[str]:
    """``@me`` as docs/protocol.md#rooms counts it (any case, not followed by a name character)."""
    return re.compile("@" + re.escape(me) + r"(?![\w-])", re.IGNORECASE)
