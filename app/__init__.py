"""The chat web app: browser client, HTTP API and the gateway into the core.

Run with ``python -m app`` (``--help`` lists the flags). ``create_app(config)``
builds the aiohttp application; ``app/gateway.py`` forwards each browser session
into the core over one framed-TCP connection.

Secure cookies: the session cookie is always ``HttpOnly; SameSite=Strict;
Path=/`` and is ``Secure`` when the site is served over HTTPS. HTTPS is known
from (a) TLS terminated by this process, (b) ``--secure-cookies``
(``CHAT_SECURE_COOKIES=1``), which forces ``Secure`` on every cookie -- the
setting for a deployment that is only reachable through an HTTPS proxy -- or
(c) ``X-Forwarded-Proto: https`` (and ``X-Forwarded-Host`` for the CSRF origin
check), honoured only with ``--trust-proxy`` (``CHAT_WEB_TRUST_PROXY=1``),
because without a proxy that overwrites them any client could send them.
"""

from .web import create_app

__all__ = ["create_app"]
