"""The tkinter desktop client.

``model`` (ChatClient: socket, codec, state; no Tk) is driven by ``tick()``
from the Tk view in ``window`` every 100 ms; ``widgets`` holds the custom
Tk widgets the view draws with (the rooms-and-people sidebar, the message
view) and ``sheets`` the room dialogs drawn over the chat screen (new room,
join a room, members, leave). No threads anywhere
(docs/architecture.md#desktop-client).
"""
