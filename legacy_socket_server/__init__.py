"""The chat core: framed-TCP protocol, chat rules and storage."""

from . import native

# Before any compiled module is imported: an extension built from other sources is not used.
native.activate()
