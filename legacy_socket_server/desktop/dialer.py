"""Opening a trusted connection: plaintext, or TLS checked the way the settings say.

A :class:`Dialer` makes one or more connection attempts, advanced by ``pump()``
like the connection itself, and ends in exactly one of:

- ``connection``: open and trusted; the caller sends its login or resume on it.
  Nothing was written on any connection before this point (the transport
  keeps queued bytes until ``trust()``), so a password never reaches a server
  we have not trusted.
- ``refusal``: the certificate is not trusted (a changed or wrong fingerprint, a
  CA file that does not vouch for it, or the person said no). Final: the
  caller stops, it does not retry.
- ``error``: the network failed (refused, timed out, not TLS); the caller may retry.

Or it waits on ``question``: a server the system does not trust and we have
not met. The person answers with :meth:`Dialer.accept` or the caller drops the
dialer. The attempts, by settings:

- ``--fingerprint`` (pin): handshake without chain verification (with
  ``--cafile`` too: with it), then the fingerprint must be the pin.
- ``--cafile``: the chain must verify against that file, host name included.
- ``--tls`` alone: a remembered fingerprint is compared first (one handshake
  without verification); on a mismatch the system store may still vouch for
  the new certificate, else it is refused. Nothing remembered: the system
  store; if it does not trust the certificate, a second handshake without
  verification reads the fingerprint and the person is asked.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
import time
from collections.abc import Callable

from ..tls import client_context
from .transport import CONNECT_TIMEOUT, Connection
from .trust import (
    KnownHosts,
    Refusal,
    Security,
    TLSOptions,
    TrustQuestion,
    cafile_failure,
    changed_certificate,
    pin_mismatch,
)

log = logging.getLogger(__name__)

# The attempts a dialer makes; each names the TLS context it uses.
PLAIN = "plain"  # no TLS
PINNED = "pinned"  # compare with --fingerprint (chain checked only with --cafile)
CA_FILE = "cafile"  # the chain against --cafile
REMEMBERED = "remembered"  # unverified, compare with the known-hosts file
SYSTEM = "system"  # the system trust store
PROBE = "probe"  # unverified, only to read the fingerprint for the question


class Dialer:
    """One trusted connection to ``host:port`` (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: TLSOptions | None,
        known: KnownHosts | None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        # Trust on first use needs somewhere to remember (else it would ask forever).
        self.known = known if known is not None or tls is None else KnownHosts()
        self._connect_timeout = connect_timeout
        self._clock = clock
        self.connection: Connection | None = None
        self.security: Security | None = None
        self.refusal: Refusal | None = None
        self.error: str | None = None
        self.question: TrustQuestion | None = None
        #: A fingerprint the system store vouched for after a mismatch with the remembered one.
        self._remembered_mismatch: str | None = None
        self._accepted: str | None = None  # the person said yes to this one, this dial
        self._probe_reason = ""  # why the system store refused, for the question
        self._attempt: Connection | None = None
        self._step = ""
        self._start(self._first_step())

    @property
    def done(self) -> bool:
        return bool(self.connection or self.refusal or self.error)

    def _first_step(self) -> str:
        if self.tls is None:
            return PLAIN
        if self.tls.fingerprint:
            return PINNED
        if self.tls.cafile:
            return CA_FILE
        return REMEMBERED if self._remembered() else SYSTEM

    def _remembered(self) -> str | None:
        return self.known.lookup(self.host, self.port) if self.known else None

    def _start(self, step: str) -> None:
        self._step = step
        cafile = self.tls.cafile if self.tls else None
        try:
            if step == PLAIN:
                ctx = None
            elif step == SYSTEM:
                ctx = _context(None, True, 0.0)
            elif step == CA_FILE or (step == PINNED and cafile):
                assert cafile is not None
                ctx = _context(cafile, True, os.stat(cafile).st_mtime)
            else:
                ctx = _context(None, False, 0.0)
        except (OSError, ssl.SSLError) as exc:  # the CA file went away or broke since start
            self._attempt = None
            reason = f"cannot load it: {getattr(exc, 'strerror', None) or exc}"
            self._refuse(cafile_failure(self.host, self.port, cafile or "", reason))
            return
        self._attempt = Connection(
            self.host,
            self.port,
            tls=ctx,
            connect_timeout=self._connect_timeout,
            clock=self._clock,
        )

    def pump(self) -> None:
        """Advance the current attempt; decide when its handshake is done."""
        attempt = self._attempt
        if attempt is None or self.done:
            return
        attempt.pump()
        if attempt.is_open:  # plaintext: nothing to check
            self._open(attempt, Security(encrypted=False))
        elif attempt.secured:
            self._check(attempt)
        elif attempt.closed:
            self._failed(attempt)

    def accept(self) -> str | None:
        """The person trusts the asked fingerprint: remember it and connect again.

        Returns None, or why the known-hosts file could not be written (the
        fingerprint is then trusted for this run only).
        """
        question = self.question
        if question is None:
            return None
        self.question = None
        self._accepted = question.fingerprint
        problem = None
        if self.known is not None:
            problem = self.known.remember(self.host, self.port, question.fingerprint)
        # A new connection: the probe one was closed rather than kept waiting on a
        # person (the core ends connections that do not log in within 30 s).
        self._start(REMEMBERED)
        return problem

    def close(self) -> None:
        if self._attempt is not None:
            self._attempt.close()
            self._attempt = None

    # -- decisions --------------------------------------------------------------------
    def _check(self, attempt: Connection) -> None:
        fingerprint = attempt.fingerprint or ""
        step = self._step
        if step == PINNED:
            assert self.tls is not None and self.tls.fingerprint
            if fingerprint != self.tls.fingerprint:
                self._refuse(pin_mismatch(self.host, self.port, self.tls.fingerprint, fingerprint))
                return
            if self.known is not None and self._remembered() != fingerprint:
                # A deliberate pin replaces what was remembered (the way to accept a
                # changed certificate the warning names).
                self.known.remember(self.host, self.port, fingerprint)
            self._open(attempt, self._security(attempt, "pinned fingerprint"))
        elif step == CA_FILE:
            self._open(attempt, self._security(attempt, "CA file"))
        elif step == SYSTEM:
            self._open(attempt, self._security(attempt, "system trust store"))
        elif step == REMEMBERED:
            remembered = self._remembered()
            if fingerprint == remembered:
                how = (
                    "accepted by you" if fingerprint == self._accepted else "remembered fingerprint"
                )
                self._open(attempt, self._security(attempt, how))
            elif remembered is None:
                # The line went away since we looked (edited by hand): start over.
                attempt.close()
                self._start(SYSTEM)
            else:
                # Perhaps the server now has a certificate the system trusts.
                attempt.close()
                self._remembered_mismatch = fingerprint
                self._start(SYSTEM)
        elif step == PROBE:
            attempt.close()
            self._attempt = None
            self.question = TrustQuestion(self.host, self.port, fingerprint, self._probe_reason)

    def _failed(self, attempt: Connection) -> None:
        reason = attempt.error or "connection closed"
        if attempt.cert_error is None:
            self.error = reason
            self._attempt = None
            return
        if self._step == CA_FILE or (self._step == PINNED and self.tls and self.tls.cafile):
            assert self.tls is not None and self.tls.cafile
            self._refuse(cafile_failure(self.host, self.port, self.tls.cafile, attempt.cert_error))
        elif self._step == SYSTEM and self._remembered_mismatch is not None:
            remembered = self._remembered() or "(none)"
            path = self.known.path if self.known else "known_hosts"
            self._refuse(
                changed_certificate(
                    self.host, self.port, remembered, self._remembered_mismatch, path
                )
            )
        elif self._step == SYSTEM:
            # Not trusted by the system (self-signed, say): read its fingerprint, then
            # the known-hosts file or the person decides.
            self._probe_reason = attempt.cert_error
            self._start(PROBE)
        else:
            self.error = reason
            self._attempt = None

    def _refuse(self, refusal: Refusal) -> None:
        log.warning("%s", refusal.summary)
        self.close()
        self.refusal = refusal

    def _open(self, attempt: Connection, security: Security) -> None:
        attempt.trust()
        self._attempt = None
        self.security = security
        self.connection = attempt

    @staticmethod
    def _security(attempt: Connection, how: str) -> Security:
        return Security(True, attempt.tls_version, attempt.fingerprint, how)


@functools.lru_cache(maxsize=8)
def _context(cafile: str | None, verify: bool, _mtime: float) -> ssl.SSLContext:
    """A client context, kept: loading the system store takes ~30 ms of a 100 ms tick,
    and every reconnect needs one. A CA file is loaded again when it changes."""
    return client_context(cafile, verify=verify)
