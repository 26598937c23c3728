"""Where a :class:`~.model.ChatClient` is in its life; the view picks the screen from these.

A module of their own so that both the model and its rooms mixin
(``room_actions``, which the model imports) can read them.
"""

LOGGED_OUT = "logged_out"  # login form, maybe with ``error``
LOGGING_IN = "logging_in"  # connecting and waiting for the login reply
UNREACHABLE = "unreachable"  # a login attempt could not reach the server: offer Retry
READY = "ready"  # logged in, polling
RECONNECTING = "reconnecting"  # connection lost; resuming with the token, with backoff
CLOSED = "closed"  # exit sent; the client is finished
