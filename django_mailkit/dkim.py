"""
DKIM signing (RFC 6376) of messages on their way out, with dkimpy.

The SMTP backend's ``dkim`` OPTION is validated here into a
:class:`DKIMSigner`, once, when the mailer is built: a missing or unreadable
key, a key dkimpy can't use, or a malformed domain, selector or identity is a
configuration error then (and so a system check error at startup), never a
failure at the first send.

Messages are signed at send time, just before their bytes go on the wire:
the outbox stores the unsigned original, and a message sent again later
gets a fresh signature (with a fresh ``t=``).

Signatures use ``rsa-sha256`` with relaxed/relaxed canonicalization, which
survives the re-folding of headers and the white-space changes that relays
make. Unless the option lists them, the headers signed are those RFC 6376
section 5.4.1 recommends that the message has, and From, To, Cc, Subject,
Date, Message-ID and Reply-To are signed once more ("oversigned"), so a
relay can't add a second one, or one that was absent, without breaking the
signature.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.utils.encoding import punycode

__all__ = ["DEFAULT_OVERSIGNED", "DKIMSigner", "SigningError", "signer_from_option"]

#: The keys the ``dkim`` OPTION takes.
OPTION_KEYS = (
    "domain",
    "selector",
    "private_key",
    "private_key_file",
    "headers",
    "identity",
)
#: Headers signed one extra time by default (when present or not), so that
#: one can't be added after signing without breaking the signature.
DEFAULT_OVERSIGNED = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
)
#: RSA keys shorter than this are refused: RFC 8301 forbids signing with
#: them, and receivers (dkimpy among them) reject their signatures.
MIN_KEY_BITS = 1024
CANONICALIZATION = (b"relaxed", b"relaxed")

# A domain name's labels (RFC 6376 section 3.5 "d=": a domain name; "s=":
# one or more dot-separated sub-domains). Underscores are allowed in a
# selector's DNS name; nothing that could end a tag (";", white space) is.
_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")
# RFC 5322 dot-atom text for the local part of i= (no quoting, no ";").
_LOCAL_PART = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
)
# A header field name (RFC 5322 section 3.6.8: printable ASCII but ":").
_FIELD_NAME = re.compile(r"[!-9;-~]+")


class SigningError(ValueError):
    """A message could not be signed (dkimpy refused it)."""


@dataclass(frozen=True)
class DKIMSigner:
    """Signs messages for one mailer: ``sign(data)`` returns the signed bytes."""

    domain: bytes
    selector: bytes
    #: The PEM private key, as dkimpy reads it (never in a repr or a log).
    private_key: bytes = field(repr=False)
    #: The header names to sign, lower-cased, in order (a name listed twice
    #: is oversigned); None: the default (see the module's docstring).
    headers: tuple[bytes, ...] | None = None
    #: The i= tag (the signing identity); None: dkimpy's default, "@domain".
    identity: bytes | None = None

    def sign(self, data: bytes) -> bytes:
        """
        Return ``data`` (a whole message, CRLF line ends) with a
        DKIM-Signature header field on top.
        """
        import dkim

        if not data.strip():
            raise SigningError("DKIM signing failed: the message is empty.")
        try:
            signer = dkim.DKIM(data, linesep=b"\r\n")
            headers = self.headers
            if headers is None:
                # The recommended headers the message has, as many times as
                # it has them, then the oversigned ones once more.
                headers = tuple(
                    name.lower()
                    for name, _ in signer.headers
                    if name.lower() in signer.should_sign
                )
                headers += DEFAULT_OVERSIGNED
            signature = signer.sign(
                self.selector,
                self.domain,
                self.private_key,
                identity=self.identity,
                canonicalize=CANONICALIZATION,
                include_headers=list(headers),
            )
        except (dkim.DKIMException, IndexError, ValueError) as exc:
            # dkimpy's parser raises IndexError on some malformed header
            # blocks (a first line that is a continuation).
            raise SigningError(f"DKIM signing failed: {exc!r}") from exc
        return bytes(signature) + data


def signer_from_option(
    value: Any, error: Callable[[str], Exception]
) -> DKIMSigner | None:
    """
    Validate the ``dkim`` OPTION and return its signer (None when unset).

    ``error(detail)`` makes the configuration error to raise; each detail
    is one sentence naming the key at fault.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise error(
            "must be a dict with 'domain', 'selector' and 'private_key' or "
            f"'private_key_file' (got {type(value).__name__})."
        )
    unknown = [key for key in value if key not in OPTION_KEYS]
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        raise error(
            f"unknown key(s) {names}; it takes "
            + ", ".join(repr(key) for key in OPTION_KEYS)
            + "."
        )
    try:
        import dkim  # noqa: F401
    except ImportError:
        raise error(
            "signing needs the dkimpy package, which is not installed: "
            "pip install 'django-mailkit[dkim]'."
        )
    domain = _domain(value.get("domain"), "domain", error)
    selector = _domain(value.get("selector"), "selector", error)
    key = _private_key(value, error)
    headers = _headers(value.get("headers"), error)
    identity = _identity(value.get("identity"), domain, error)
    return DKIMSigner(
        domain=domain.encode("ascii"),
        selector=selector.encode("ascii"),
        private_key=key,
        headers=headers,
        identity=identity,
    )


def _domain(value: Any, key: str, error: Callable[[str], Exception]) -> str:
    if value is None or value == "":
        raise error(f"{key!r} is required.")
    if not isinstance(value, str):
        raise error(f"{key!r} must be a string (got {type(value).__name__}).")
    name = value.rstrip(".") if key == "domain" else value
    try:
        # A Unicode domain is signed as its A-labels, as DNS publishes it.
        name = punycode(name) if not name.isascii() else name
    except UnicodeError:
        raise error(f"{key!r} is not a valid domain name (got {value!r}).")
    if len(name) > 253 or not _DOMAIN.fullmatch(name):
        what = "domain name" if key == "domain" else "selector (dot-separated labels)"
        raise error(f"{key!r} is not a valid {what} (got {value!r}).")
    return name.lower() if key == "domain" else name


def _private_key(value: dict[str, Any], error: Callable[[str], Exception]) -> bytes:
    inline, path = value.get("private_key"), value.get("private_key_file")
    if inline and path:
        raise error("set 'private_key' or 'private_key_file', not both.")
    if path:
        if not isinstance(path, str | Path):
            raise error(
                f"'private_key_file' must be a path (got {type(path).__name__})."
            )
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise error(
                f"'private_key_file' {str(path)!r} cannot be read: "
                f"{exc.strerror or exc}."
            )
        source = f"the key in {str(path)!r}"
    elif inline:
        if isinstance(inline, str):
            inline = inline.encode("ascii", "replace")
        if not isinstance(inline, bytes):
            raise error(
                "'private_key' must be the PEM text of the key (got "
                f"{type(inline).__name__})."
            )
        pem = inline
        source = "'private_key'"
    else:
        raise error("'private_key' or 'private_key_file' is required.")
    # dkimpy's PEM reader wants "\n" line ends; a key saved on Windows has
    # "\r\n".
    pem = pem.replace(b"\r\n", b"\n").strip() + b"\n"
    problem = _key_problem(pem)
    if problem:
        raise error(f"{source} {problem}")
    return pem


@functools.lru_cache(maxsize=16)
def _key_problem(pem: bytes) -> str | None:
    """
    What makes ``pem`` unusable for signing, or None. Cached: a mailer is
    built for every send, and the trial signature costs a few milliseconds.
    """
    from dkim import crypto

    if b"ENCRYPTED" in pem.split(b"\n", 1)[0]:
        return "is encrypted: DKIM signing needs the key without a passphrase."
    try:
        key = crypto.parse_pem_private_key(pem)
    except (crypto.UnparsableKeyError, ValueError, IndexError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return (
            "is not an RSA private key in PEM form (PKCS#1 or unencrypted "
            f"PKCS#8){': ' + first if first else ''}."
        )
    bits = int(key["modulus"]).bit_length()
    if bits < MIN_KEY_BITS:
        return (
            f"is a {bits}-bit RSA key: DKIM needs at least {MIN_KEY_BITS} bits "
            "(RFC 8301), 2048 recommended."
        )
    # A trial signature, checked with the public half: a key whose parts
    # don't belong together would sign every message unverifiably.
    import hashlib

    digest = hashlib.sha256(b"django_mailkit DKIM key check")
    try:
        signature = crypto.RSASSA_PKCS1_v1_5_sign(digest, key)
        good = crypto.RSASSA_PKCS1_v1_5_verify(
            digest,
            bytes(signature),
            {
                "modulus": key["modulus"],
                "publicExponent": key["publicExponent"],
            },
        )
    except (ArithmeticError, ValueError, AssertionError) as exc:
        return f"cannot sign: {exc}."
    if not good:
        return "is inconsistent: its signatures don't verify with its public key."
    return None


def _headers(value: Any, error: Callable[[str], Exception]) -> tuple[bytes, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise error(
            "'headers' must be a list of header names such as "
            f"['From', 'To', 'Subject'] (got {value!r})."
        )
    from dkim import DKIM

    names: list[bytes] = []
    for name in value:
        if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
            raise error(f"'headers' has {name!r}, which is not a header name.")
        lowered = name.lower().encode("ascii")
        if lowered in DKIM.SHOULD_NOT:
            raise error(
                f"'headers' has {name!r}, which RFC 6376 says not to sign "
                "(relays add or change it)."
            )
        names.append(lowered)
    if b"from" not in names:
        raise error("'headers' must include 'From': RFC 6376 requires it signed.")
    return tuple(names)


def _identity(
    value: Any, domain: str, error: Callable[[str], Exception]
) -> bytes | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise error(f"'identity' must be a string (got {type(value).__name__}).")
    local, at, host = value.rpartition("@")
    host = host.lower().rstrip(".")
    if (
        not at
        or (local and not _LOCAL_PART.fullmatch(local))
        or not _DOMAIN.fullmatch(host)
        or not (host == domain or host.endswith("." + domain))
    ):
        raise error(
            f"'identity' must be an address (or '@domain') in {domain!r} or a "
            f"subdomain of it (got {value!r})."
        )
    return f"{local}@{host}".encode("ascii")
