"""TLS for the framed-TCP protocol (docs/protocol.md#tls): certificates, contexts, fingerprints.

The core listens with TLS on a second port when asked. Its certificate is the
operator's, or one it generates at its first start (ECDSA P-256, self-signed)
and keeps in the data directory. Clients verify it by a trusted chain, a
pinned fingerprint, or trust on first use; a fingerprint is always written
``sha256:`` and 64 lowercase hex digits, of the leaf certificate's DER bytes.

``python -m legacy_socket_server.tls fingerprint`` prints the fingerprint an
operator hands out to users.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import logging
import re
import signal
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .storage_files import atomic_write

log = logging.getLogger(__name__)

#: Files of the generated certificate, inside the data directory.
CERT_FILE = "tls-cert.pem"
KEY_FILE = "tls-key.pem"
#: Names written in a generated certificate's subjectAltName when none are given.
DEFAULT_NAMES = "localhost,127.0.0.1,::1"
#: The TLS port by convention (beside the plaintext 5050), like IRC's 6697 beside 6667.
DEFAULT_TLS_PORT = 5051
#: A peer that has not finished its handshake by then is cut: sockets that never
#: speak must not pile up (a person's client finishes in milliseconds).
HANDSHAKE_TIMEOUT = 10.0
#: How often the core looks at its certificate files for a renewal.
RELOAD_CHECK_INTERVAL = 30.0
#: A generated certificate is pinned by fingerprint, so its expiry only has to be far away.
GENERATED_VALID_DAYS = 3650

_FINGERPRINT_RE = re.compile(r"^(?:sha256:)?((?:[0-9a-f]{2}:?){31}[0-9a-f]{2})$")


class TLSSetupError(Exception):
    """A certificate or key that cannot be used; the message says which file and why."""


class UntrustedCertificate(Exception):
    """The peer's certificate is not the one pinned; the message shows both fingerprints."""


# -- fingerprints -------------------------------------------------------------------------
def fingerprint(der: bytes) -> str:
    """The ``sha256:<64 hex>`` fingerprint of a DER-encoded certificate."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def fingerprint_of_file(path: Path | str) -> str:
    """The fingerprint of the first (leaf) certificate in a PEM file."""
    text = Path(path).read_text(encoding="ascii", errors="replace")
    match = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
    if match is None:
        raise TLSSetupError(f"{path}: no PEM certificate in it")
    return fingerprint(ssl.PEM_cert_to_DER_cert(match.group(0)))


def parse_fingerprint(text: str) -> str:
    """Normalise a fingerprint as users paste it (any case, with or without colons).

    Raises ``ValueError`` with a message fit for a usage error.
    """
    match = _FINGERPRINT_RE.match(text.strip().lower())
    if match is None:
        raise ValueError(f"expected sha256: and 64 hex digits, got {text!r}")
    return "sha256:" + match.group(1).replace(":", "")


def peer_fingerprint(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str:
    """The fingerprint of the certificate the peer presented in this handshake."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("the server presented no certificate")
    return fingerprint(der)


@dataclass(frozen=True)
class TLSListener:
    """The core's TLS listener settings (``--tls-port`` and friends)."""

    port: int = DEFAULT_TLS_PORT
    cert: Path | None = None  # None: generated in the data directory
    key: Path | None = None
    names: tuple[str, ...] = tuple(DEFAULT_NAMES.split(","))
    handshake_timeout: float = HANDSHAKE_TIMEOUT


# -- the core's certificate -----------------------------------------------------------------
@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path | None  # None: the key is in the certificate file
    generated: bool


def parse_names(text: str) -> tuple[str, ...]:
    """Comma-separated host names and addresses for a generated certificate."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ValueError("expected at least one host name or address")
    return names


def generate_self_signed(cert_path: Path, key_path: Path, names: Sequence[str]) -> None:
    """Write a new self-signed ECDSA P-256 certificate for ``names`` (key file mode 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=GENERATED_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        # Its own trust anchor: a user may also hand it to a client as a CA file.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(key_path, key_pem, mode=0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def ensure_certificate(
    data_dir: Path,
    cert: Path | None = None,
    key: Path | None = None,
    names: Sequence[str] = parse_names(DEFAULT_NAMES),
) -> CertFiles:
    """The operator's files when given, else the generated pair (made at the first start)."""
    if cert is not None:
        return CertFiles(Path(cert), Path(key) if key is not None else None, generated=False)
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    if not (cert_path.exists() and key_path.exists()):
        data_dir.mkdir(parents=True, exist_ok=True)
        generate_self_signed(cert_path, key_path, names)
        log.info(
            "generated a self-signed TLS certificate for %s in %s; users check it by its "
            "fingerprint",
            ", ".join(names),
            cert_path,
        )
    return CertFiles(cert_path, key_path, generated=True)


def server_context(files: CertFiles) -> ssl.SSLContext:
    """A server context with TLS 1.2 or newer and the certificate of ``files`` loaded."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx, files)
    return ctx


def _load(ctx: ssl.SSLContext, files: CertFiles) -> None:
    try:
        ctx.load_cert_chain(files.cert, files.key)
    except FileNotFoundError as exc:
        raise TLSSetupError(f"{exc.filename}: no such file") from None
    except PermissionError as exc:
        raise TLSSetupError(f"{exc.filename}: not readable by this user") from None
    except ssl.SSLError as exc:
        raise TLSSetupError(
            f"{files.cert}{' / ' + str(files.key) if files.key else ''}: "
            f"not a usable PEM certificate chain and matching key ({exc.reason or exc})"
        ) from None


class CertificateReloader:
    """Loads a renewed certificate into the live context without dropping anyone.

    New handshakes use the new certificate; connections already open keep the
    one they agreed on. A renewal is picked up on SIGHUP and when the files'
    modification times change (checked every ``interval`` seconds). A broken
    renewal is logged and the old certificate kept.
    """

    def __init__(self, ctx: ssl.SSLContext, files: CertFiles) -> None:
        self.ctx = ctx
        self.files = files
        self.fingerprint = fingerprint_of_file(files.cert)
        self._stamp = self._mtimes()
        self._timer: asyncio.TimerHandle | None = None

    def _mtimes(self) -> tuple[float, ...]:
        stamps = []
        for path in (self.files.cert, self.files.key):
            if path is not None:
                try:
                    stamps.append(path.stat().st_mtime)
                except OSError:
                    stamps.append(-1.0)
        return tuple(stamps)

    def reload(self) -> bool:
        """Load the files again; True when the certificate changed."""
        self._stamp = self._mtimes()
        try:
            # A bad pair must not reach the live context: try it on a spare one first.
            _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), self.files)
            new = fingerprint_of_file(self.files.cert)
            _load(self.ctx, self.files)
        except (TLSSetupError, OSError) as exc:
            log.error("TLS certificate not reloaded, keeping %s: %s", self.fingerprint, exc)
            return False
        changed = new != self.fingerprint
        self.fingerprint = new
        log.info("TLS certificate %s: %s", "reloaded" if changed else "unchanged after reload", new)
        return changed

    def check(self) -> bool:
        """Reload if the files changed since the last load; True when it reloaded."""
        return self._mtimes() != self._stamp and self.reload()

    def start(self, interval: float = RELOAD_CHECK_INTERVAL) -> None:
        """Watch for SIGHUP and file changes on the running loop."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # no SIGHUP here (Windows, or not the main thread): the file check remains

        def tick() -> None:
            self.check()
            self._timer = loop.call_later(interval, tick)

        self._timer = loop.call_later(interval, tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except (NotImplementedError, RuntimeError, ValueError):
            pass


# -- clients ------------------------------------------------------------------------------
def client_context(cafile: Path | str | None = None, *, verify: bool = True) -> ssl.SSLContext:
    """A client context: the system's trust store (or ``cafile``) with host names checked.

    ``verify=False`` is for a pinned fingerprint, which the caller compares
    after the handshake (:func:`peer_fingerprint`); nothing is trusted before that.
    """
    if verify:
        ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@dataclass(frozen=True)
class ClientTLS:
    """How a program verifies the core over TLS: a CA file, or a pinned fingerprint,
    else the system's trust store. (The desktop client adds trust on first use.)"""

    cafile: Path | None = None
    fingerprint: str | None = None

    def context(self) -> ssl.SSLContext:
        return client_context(self.cafile, verify=self.fingerprint is None)

    def check(self, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> None:
        """After the handshake: raise ``ssl.SSLError`` unless the pinned certificate was shown."""
        if self.fingerprint is None:
            return  # the chain and host name were verified in the handshake
        if ssl_object is None:
            raise ssl.SSLError("no TLS session to check")
        got = peer_fingerprint(ssl_object)
        if got != self.fingerprint:
            raise ssl.SSLError(
                f"the core's certificate is {got}, not the pinned {self.fingerprint}"
            )


# -- command line -----------------------------------------------------------------------------
def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    from .settings import DEFAULT_DATA_DIR, SettingsParser

    p = SettingsParser(
        prog="python -m legacy_socket_server.tls",
        description="The core's TLS certificate. 'fingerprint' prints the SHA-256 fingerprint "
        "users compare when their client first connects (the core logs it at every start too).",
        env=env,
    )
    p.add_argument(
        "command",
        choices=["fingerprint", "generate"],
        help="fingerprint: print it; generate: make the self-signed pair in --data-dir unless "
        "it is there (several cores then present one certificate: docs/deploy.md#cluster)",
    )
    p.add_setting(
        "--tls-names",
        env="CHAT_TLS_NAMES",
        type=parse_names,
        default=parse_names(DEFAULT_NAMES),
        help="generate: the names (and addresses) users type as --host, comma-separated",
    )
    p.add_setting(
        "--data-dir",
        env="CHAT_DATA_DIR",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="the core's data directory (where a generated certificate lives)",
    )
    p.add_setting(
        "--tls-cert",
        env="CHAT_TLS_CERT",
        type=Path,
        default=None,
        help="the operator's certificate, when the core uses one",
    )
    args = p.parse_args(argv)
    if args.command == "generate":
        try:
            ensure_certificate(args.data_dir, None, None, args.tls_names)
        except OSError as exc:
            print(f"cannot write the certificate in {args.data_dir}: {exc}", file=sys.stderr)
            return 1
    path = args.tls_cert or args.data_dir / CERT_FILE
    try:
        print(fingerprint_of_file(path))
    except FileNotFoundError:
        print(
            f"{path}: no certificate yet; start the core with --tls-port once to generate it",
            file=sys.stderr,
        )
        return 1
    except TLSSetupError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
