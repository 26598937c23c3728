"""The certificate dialogs, drawn over the whole window (login or chat screen).

``TrustDialog`` asks about a server the system does not trust and we have not
met (trust on first use): host:port, the fingerprint to compare, Accept or
Refuse. The focus starts on Refuse, so an Enter meant for the login form does
not accept a certificate by accident; Tab reaches Accept, Esc refuses.
``CertificateWarning`` explains a refused certificate (changed, or not the
pinned one) with both fingerprints, in selectable text so they can be copied.
Both are :class:`~.sheets.Card` s: they keep the keyboard until they close.
"""

from __future__ import annotations

import re
import tkinter as tk
from tkinter import font as tkfont
from tkinter import ttk
from typing import TYPE_CHECKING, Any

from .sheets import Card
from .trust import Refusal, TrustQuestion, grouped_fingerprint, host_key
from .widgets import APP_BG, TEXT

if TYPE_CHECKING:
    from .window import ChatWindow

FINGERPRINT_RE = re.compile(r"sha256:[0-9a-f]{64}")
TITLES = {
    "changed": "Certificate changed — not connected",
    "pin": "Certificate does not match the pin — not connected",
}


class Dialog(Card):
    """A card centred over the whole window."""

    def __init__(self, app: ChatWindow, title: str, heading_style: str = "Header.TLabel") -> None:
        super().__init__(app.root, app.fonts, title, heading_style)
        self.app = app
        self.mono = app.fonts["mono"]
        self._boxes: list[tk.Text] = []

    def forget_me(self) -> None:
        if self.app.dialog is self:
            self.app.dialog = None

    def fallback_focus(self) -> tk.Misc | None:
        return self.app.login.password if self.app.screen is self.app.login else None

    def paragraph(self, text: str, style: str = "Card.TLabel") -> ttk.Label:
        label = ttk.Label(self.body, text=text, style=style, wraplength=470, justify="left")
        label.pack(anchor="w", fill="x", pady=(0, 8))
        return label

    def text_box(self, text: str, height: int, width: int, font: tkfont.Font) -> tk.Text:
        """Read-only text that can still be selected and copied; fingerprints in mono."""
        box = tk.Text(
            self.body, height=height, width=width, wrap="word", bd=0, highlightthickness=1,
            highlightbackground="#cbd5e1", bg=APP_BG, fg=TEXT, font=font, padx=10,
            pady=8, takefocus=0, cursor="xterm",
        )  # fmt: skip
        box.tag_configure("fingerprint", font=self.mono)
        box.insert("1.0", text)
        for match in FINGERPRINT_RE.finditer(text):
            box.tag_add("fingerprint", f"1.0+{match.start()}c", f"1.0+{match.end()}c")
        box.configure(state="disabled")
        box.pack(anchor="w", fill="x", pady=(0, 10))
        self._boxes.append(box)
        return box

    def open(self) -> None:
        super().open()
        # Each text box as tall as its wrapped lines, so nothing is cut off: known
        # only once it is laid out at its real width.
        self.update_idletasks()
        for box in self._boxes:
            shown = box.count("1.0", "end-1c", "update", "displaylines")
            lines = shown[0] if isinstance(shown, tuple) else shown
            if lines:
                box.configure(height=lines + 1)

    def buttons(self, *specs: tuple[str, str, str, Any]) -> list[ttk.Button]:
        """Buttons right-aligned in the given order: (label, style, name, command)."""
        row = ttk.Frame(self.body, style="Sheet.TFrame")
        row.pack(fill="x", pady=(6, 0))
        made = []
        for label, style, name, command in specs:
            button = ttk.Button(row, text=label, style=style, command=command)
            made.append(button)
            self.field(button, name)
        for button in reversed(made):
            button.pack(side="right", padx=(8, 0))
        return made

    def text_for_state(self) -> str:
        """Everything the dialog says, for the state dump."""
        return ""


class TrustDialog(Dialog):
    """First contact with a certificate the system does not trust: accept or refuse it."""

    kind = "trust"

    def __init__(self, app: ChatWindow, question: TrustQuestion) -> None:
        super().__init__(app, "Check this server's certificate")
        self.question = question
        where = host_key(question.host, question.port)
        self.intro = self.paragraph(
            f"Your system does not trust the certificate of {where} "
            f"({question.reason}). That is expected the first time you connect to a "
            "server with its own certificate. Compare its fingerprint with the one your "
            "administrator gave you:"
        )
        ttk.Label(self.body, text="SHA-256 fingerprint", style="Muted.TLabel").pack(anchor="w")
        self.fingerprint = self.text_box(
            grouped_fingerprint(question.fingerprint), 2, 40, self.mono
        )
        self.note = self.paragraph(
            f"Accept remembers it for {where}; you will not be asked again unless it "
            "changes. Nothing has been sent to the server yet, not even your user name.",
            style="Muted.TLabel",
        )
        self.accept_button, self.refuse_button = self.buttons(
            ("Accept and remember", "Accent.TButton", "accept", self.accept),
            ("Refuse", "Ghost.TButton", "refuse", self.refuse),
        )
        ttk.Label(
            self.body, text="Tab moves · Enter chooses · Esc refuses", style="Muted.TLabel"
        ).pack(anchor="e", pady=(8, 0))

    def first(self) -> tk.Misc:
        return self.refuse_button  # the safe choice is the default one

    def accept(self) -> None:
        self.close()
        self.app.client.answer_trust(True)
        self.app.apply({"trust", "status"})

    def refuse(self) -> None:
        self.close()
        self.app.client.answer_trust(False)
        self.app.apply({"trust", "status", "phase"})

    def _escape(self, _event: Any) -> str:
        self.refuse()
        return "break"

    def text_for_state(self) -> str:
        return f"{self.intro.cget('text')}\n{self.question.fingerprint}\n{self.note.cget('text')}"


class CertificateWarning(Dialog):
    """Why a server's certificate was refused, with both fingerprints and what to do."""

    kind = "warning"

    def __init__(self, app: ChatWindow, refusal: Refusal) -> None:
        super().__init__(app, TITLES.get(refusal.kind, "Not connected"), "Danger.TLabel")
        self.refusal = refusal
        self.details = self.text_box(refusal.details, 4, 64, self.app.fonts["body"])
        (self.close_button,) = self.buttons(("Close", "Ghost.TButton", "close", self.close))

    def text_for_state(self) -> str:
        return self.refusal.details
