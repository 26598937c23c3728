"""Which servers the desktop client trusts: TLS options, the known-hosts file, what to show.

A TLS server is trusted by a pinned fingerprint (``--fingerprint``), by a CA
file (``--cafile``), by the system's trust store, or, when the system does not
trust it, by trust on first use: the person is asked once and the answer is
kept in the known-hosts file, one ``host:port sha256:...`` line a server. Later
connections compare silently; a different certificate is refused with both
fingerprints shown (docs/protocol.md#tls). The connection attempts themselves
are in ``dialer``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..storage_files import atomic_write
from ..tls import parse_fingerprint

log = logging.getLogger(__name__)

APP_DIR = "teamchat"
KNOWN_HOSTS = "known_hosts"


@dataclass(frozen=True)
class TLSOptions:
    """TLS is on when a client has one of these; both fields are optional."""

    cafile: str | None = None  # verify the chain against this CA file (and the host name)
    fingerprint: str | None = None  # the server's certificate must have this fingerprint


def known_hosts_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/teamchat/known_hosts``, else ``~/.config/teamchat/known_hosts``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or ""
    # The XDG spec says a relative value is to be ignored.
    root = Path(base) if os.path.isabs(base) else Path.home() / ".config"
    return root / APP_DIR / KNOWN_HOSTS


def host_key(host: str, port: int) -> str:
    """``host:port`` as written in the file (``[::1]:5051`` for an IPv6 address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class KnownHosts:
    """The known-hosts file, read at each lookup so an edit by hand counts at once.

    A fingerprint accepted in this run is also kept in memory, so a file that
    cannot be written (a read-only home) does not make the client ask again
    and again; it is then asked again at the next start.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else known_hosts_path()
        self._session: dict[str, str] = {}

    def lookup(self, host: str, port: int) -> str | None:
        """The remembered fingerprint of ``host:port``, or None."""
        key = host_key(host, port)
        return self._read().get(key) or self._session.get(key)

    def remember(self, host: str, port: int, fingerprint: str) -> str | None:
        """Keep ``fingerprint`` for ``host:port`` (replacing an older one); written atomically.

        Returns None, or a sentence saying why the file could not be written
        (the fingerprint is then trusted for this run only).
        """
        key = host_key(host, port)
        self._session[key] = fingerprint
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        except OSError as exc:
            return self._unsaved(exc)
        # Other lines (comments, other servers) are kept as they are.
        kept = [line for line in lines if _parse_line(line)[0] != key]
        kept.append(f"{key} {fingerprint}")
        try:
            _write_atomically(self.path, "\n".join(kept) + "\n")
        except OSError as exc:
            return self._unsaved(exc)
        log.info("remembered %s %s in %s", key, fingerprint, self.path)
        return None

    def _unsaved(self, exc: OSError) -> str:
        text = f"Could not save the fingerprint in {self.path} ({exc.strerror or exc})."
        log.warning("%s", text)
        return text

    def _read(self) -> dict[str, str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read %s: %s", self.path, exc)
            return {}
        found: dict[str, str] = {}
        for line in text.splitlines():
            key, fingerprint = _parse_line(line)
            if key and fingerprint:
                found[key] = fingerprint
        return found


def _parse_line(line: str) -> tuple[str | None, str | None]:
    """``(host:port, fingerprint)`` of one line; Nones for a comment or a broken line."""
    parts = line.split()
    if len(parts) != 2 or parts[0].startswith("#"):
        return None, None
    try:
        return parts[0], parse_fingerprint(parts[1])
    except ValueError:
        return parts[0], None


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode("utf-8"))


# -- what the view shows --------------------------------------------------------------
def short_fingerprint(fingerprint: str) -> str:
    """``sha256:ab12cd34…90ef``: enough to recognise, the full one is in the tooltip."""
    digits = fingerprint.removeprefix("sha256:")
    return f"sha256:{digits[:8]}…{digits[-4:]}"


def grouped_fingerprint(fingerprint: str) -> str:
    """The 64 digits in two lines of eight groups of four, for comparing by eye."""
    digits = fingerprint.removeprefix("sha256:")
    groups = [digits[i : i + 4] for i in range(0, len(digits), 4)]
    return " ".join(groups[:8]) + "\n" + " ".join(groups[8:])


@dataclass(frozen=True)
class Security:
    """How the current (or last) connection is protected."""

    encrypted: bool
    version: str | None = None  # "TLSv1.3"
    fingerprint: str | None = None
    #: "pinned fingerprint", "CA file", "system trust store", "remembered fingerprint",
    #: "accepted by you"; "" for plaintext.
    verified_by: str = ""

    @property
    def summary(self) -> str:
        if not self.encrypted:
            return "Not encrypted"
        text = f"Encrypted ({self.version})"
        return f"{text} · {short_fingerprint(self.fingerprint)}" if self.fingerprint else text

    @property
    def details(self) -> str:
        if not self.encrypted:
            return "Plaintext: anyone on the network path can read this connection."
        how = _HOW.get(self.verified_by, self.verified_by)
        return f"{self.version} · {how}\ncertificate {self.fingerprint}"


#: Security.verified_by in a sentence, for the tooltip.
_HOW = {
    "pinned fingerprint": "matches the pinned fingerprint (--fingerprint)",
    "CA file": "verified with the CA file (--cafile)",
    "system trust store": "verified by the system's trust store",
    "remembered fingerprint": "the fingerprint remembered in known_hosts",
    "accepted by you": "the fingerprint you accepted (remembered in known_hosts)",
}


def plan(host: str, port: int, tls: TLSOptions | None) -> str:
    """What a login will do, shown before connecting."""
    where = host_key(host, port)
    if tls is None:
        return f"Plaintext to {where} · not encrypted"
    if tls.fingerprint:
        return f"TLS to {where} · pinned {short_fingerprint(tls.fingerprint)}"
    if tls.cafile:
        return f"TLS to {where} · verified with {Path(tls.cafile).name}"
    return f"TLS to {where}"


@dataclass(frozen=True)
class TrustQuestion:
    """A server the system does not trust and we have not met: ask the person."""

    host: str
    port: int
    fingerprint: str
    reason: str  # why the system store refused it, e.g. "self-signed certificate"


@dataclass(frozen=True)
class Refusal:
    """Why a server was not trusted: ``summary`` for the login screen, ``details`` (with
    the fingerprints and what to do) for a warning dialog when there is more to say."""

    kind: str  # "changed", "pin", "cafile", "refused"
    summary: str
    details: str = ""
    old: str | None = None
    new: str | None = None


def changed_certificate(host: str, port: int, old: str, new: str, known: Path) -> Refusal:
    where = host_key(host, port)
    details = (
        f"The certificate of {where} is not the one this computer remembers.\n\n"
        f"Remembered:\n  {old}\n"
        f"Presented now:\n  {new}\n\n"
        "Someone may be intercepting the connection, or the server got a new "
        "certificate. Nothing was sent; ask the server's administrator for its "
        "fingerprint (python -m legacy_socket_server.tls fingerprint).\n\n"
        "If it is the presented one, accept it deliberately: either remove the line "
        f"for {where} from {known} and log in again (you will be asked), or start once "
        f"with --fingerprint {new} (it is then remembered)."
    )
    return Refusal(
        "changed",
        f"Not connected: the certificate of {where} has changed (see the warning).",
        details,
        old,
        new,
    )


def pin_mismatch(host: str, port: int, pinned: str, new: str) -> Refusal:
    where = host_key(host, port)
    details = (
        f"The certificate of {where} does not have the pinned fingerprint.\n\n"
        f"Pinned (--fingerprint):\n  {pinned}\n"
        f"Presented now:\n  {new}\n\n"
        "Nothing was sent. Check the fingerprint with the server's administrator."
    )
    return Refusal(
        "pin",
        f"Not connected: the certificate of {where} does not match --fingerprint.",
        details,
        pinned,
        new,
    )


def cafile_failure(host: str, port: int, cafile: str, reason: str) -> Refusal:
    where = host_key(host, port)
    return Refusal(
        "cafile",
        f"Not connected: the certificate of {where} did not verify against {cafile} ({reason}).",
    )


def refused_by_user(host: str, port: int) -> Refusal:
    return Refusal(
        "refused",
        f"Not connected: you refused the certificate of {host_key(host, port)}.",
    )
