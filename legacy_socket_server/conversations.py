"""One conversation's messages, indexed for paging and unread counts."""

from __future__ import annotations

from typing import Any


class ConversationIndex:
    """Messages between two users, oldest first, and each side's sent ids."""

    __slots__ = ("ids", "messages", "sent")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.messages: list[dict[str, Any]] = []
        self.sent: dict[str, list[int]] = {}

    def add(self, msg: dict[str, Any]) -> None:
        mid: int = msg["id"]
        self.ids.append(mid)
        self.messages.append(msg)
        sent = self.sent.get(msg["from"])
        if sent is None:  # (setdefault would make an empty list per message)
            self.sent[msg["from"]] = [mid]
        else:
            sent.append(mid)
