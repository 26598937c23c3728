"""The tkinter desktop client.

``model`` (ChatClient: socket, codec, state; no Tk) is driven by ``tick()``
from the Tk view in ``window`` every 100 ms; its rooms part (the room list,
members, room actions and their replies) is the mixin in ``room_actions``,
and its phases are in ``phases``. ``widgets`` holds the custom
Tk widgets the view draws with (the rooms-and-people sidebar, the message
view, the padlock mark) and ``sheets`` the room dialogs drawn over the chat
screen (new room, join a room, members, leave). ``transport`` is the
non-blocking socket (TLS in memory BIOs), ``dialer`` opens a trusted
connection the way ``trust`` (TLS options, the known-hosts file) says, and
``dialogs`` asks the person about a certificate. No threads anywhere
(docs/architecture.md#desktop-client).
"""
