"""The chat core: framed-TCP protocol, chat rules and storage."""
