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

dkimpy canonicalizes, selects the headers and writes the tag list; the RSA
private operation is OpenSSL's, through ``cryptography``, with the key parsed
once per process (dkimpy's own RSA is pure Python, some 25 times slower, and
it parses the PEM key again for every message). The output is byte for byte
dkimpy's own: each key is checked against dkimpy's ``DKIM.sign()`` once, and
should that differ (a dkimpy release outside the range tested) or
``cryptography`` be missing, messages are signed by dkimpy alone, slowly but
correctly, and a warning is logged.

Signatures use ``rsa-sha256`` with relaxed/relaxed canonicalization, which
survives the re-folding of headers and the white-space changes that relays
make. Unless the option lists them, the headers signed are those RFC 6376
section 5.4.1 recommends that the message has (and a one-click
unsubscribe's List-Unsubscribe-Post, RFC 8058), and From, To, Cc, Subject,
Date, Message-ID and Reply-To are signed once more ("oversigned"), so a
relay can't add a second one, or one that was absent, without breaking the
signature.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.utils.encoding import punycode

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

logger = logging.getLogger("django_mailkit.dkim")

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
#: Signed when present, besides those dkimpy recommends: RFC 8058 section 4
#: requires a one-click unsubscribe's two headers under the signature, and
#: dkimpy's list has List-Unsubscribe but not List-Unsubscribe-Post.
DEFAULT_ALSO_SIGNED = frozenset({b"list-unsubscribe", b"list-unsubscribe-post"})
#: RSA keys shorter than this are refused: RFC 8301 forbids signing with
#: them, and receivers (dkimpy among them) reject their signatures.
MIN_KEY_BITS = 1024
CANONICALIZATION = (b"relaxed", b"relaxed")
#: A 'private_key_file' longer than this is not repeated in an error.
_MAX_PATH_SHOWN = 255

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
    #: The key, parsed once by ``cryptography`` (OpenSSL signs with it); None:
    #: dkimpy signs alone (see the module's docstring).
    key: RSAPrivateKey | None = field(default=None, repr=False, compare=False)

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
                    or name.lower() in DEFAULT_ALSO_SIGNED
                )
                headers += DEFAULT_OVERSIGNED
            if self.key is not None:
                signature = _signature(
                    signer,
                    self.key,
                    selector=self.selector,
                    domain=self.domain,
                    identity=self.identity,
                    include_headers=headers,
                )
            else:
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


def _signature(
    message: Any,
    key: RSAPrivateKey,
    *,
    selector: bytes,
    domain: bytes,
    identity: bytes | None,
    include_headers: Sequence[bytes],
    timestamp: int | None = None,
) -> bytes:
    """
    Return the DKIM-Signature header field (CRLF-terminated) that dkimpy's
    ``message.sign()`` returns for an rsa-sha256, relaxed/relaxed signature,
    with the RSA step done by OpenSSL.

    ``message`` is a ``dkim.DKIM`` (dkimpy has split its headers and body).
    The steps and the tag list are those of dkimpy 1.1's ``DKIM.sign()`` and
    ``DomainSigner.gen_header()``, with its own helpers; ``_fast_key()``
    checks that the result equals dkimpy's before this is used.
    """
    import dkim
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    policy = dkim.CanonicalizationPolicy.from_c_value(b"/".join(CANONICALIZATION))
    include_headers = tuple(include_headers)
    body_hash = hashlib.sha256(policy.canonicalize_body(message.body)).digest()
    now = int(time.time()) if timestamp is None else timestamp
    fields = [
        (b"v", b"1"),
        (b"a", b"rsa-sha256"),
        (b"c", policy.to_c_value()),
        (b"d", domain),
        (b"i", identity or b"@" + domain),
        (b"q", b"dns/txt"),
        (b"s", selector),
        (b"t", str(now).encode("ascii")),
        (b"h", b" : ".join(include_headers)),
        (b"bh", base64.b64encode(body_hash)),
        # A placeholder as long as dkimpy's, so that b= folds onto a line
        # of its own and the tags before it fold the same once it's filled.
        (b"b", b"0" * 60),
    ]
    name = b"DKIM-Signature"
    unsigned = dkim.fold(
        b"; ".join(b"=".join(f) for f in fields), namelen=len(name), linesep=b"\r\n"
    )
    # The header is hashed with an empty b= and without its line end.
    unsigned = dkim.RE_BTAG.sub(b"\\1", unsigned)
    hasher = hashlib.sha256()
    dkim.hash_headers(
        hasher,
        policy,
        policy.canonicalize_headers(message.headers),
        include_headers,
        (name, b" " + unsigned),
        dict(fields),
    )
    signature = key.sign(
        hasher.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256())
    )
    fields[-1] = (b"b", base64.b64encode(signature))
    value: bytes = dkim.fold(
        b"; ".join(b"=".join(f) for f in fields) + b"\r\n",
        namelen=len(name),
        linesep=b"\r\n",
    )
    return name + b": " + value


#: What ``_fast_key()`` signs both ways: From, a folded Subject, a body
#: with trailing white space for relaxed canonicalization to remove.
_PROBE = (
    b"From: Probe <probe@example.com>\r\nTo: a@example.com, b@example.com\r\n"
    b"Subject: django_mailkit DKIM\r\n  probe\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\nProbe \t body \r\n\r\n\r\n"
)


@functools.lru_cache(maxsize=16)
def _fast_key(pem: bytes) -> RSAPrivateKey | None:
    """
    ``pem`` parsed by ``cryptography``, once per process (a mailer is built
    for every send, and parsing costs tens of milliseconds), or None when
    dkimpy has to sign alone: ``cryptography`` is missing, or our signature
    of a probe message differs from dkimpy's by even a byte.
    """
    import dkim

    try:
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
        from cryptography.hazmat.primitives.serialization import (
            load_pem_private_key,
        )
    except ImportError:
        logger.warning(
            "DKIM: the cryptography package is not installed; dkimpy signs "
            "alone, several times slower: pip install 'django-mailkit[dkim]'."
        )
        return None
    try:
        key = load_pem_private_key(pem, password=None)
        if not isinstance(key, RSAPrivateKey):
            return None
        selector, domain = b"probe", b"example.com"
        headers = [b"from", b"to", b"subject", b"date", b"from", b"reply-to"]
        expected = dkim.DKIM(_PROBE, linesep=b"\r\n").sign(
            selector,
            domain,
            pem,
            canonicalize=CANONICALIZATION,
            include_headers=headers,
        )
        timestamp = re.search(rb"\bt=(\d+);", expected)
        ours = _signature(
            dkim.DKIM(_PROBE, linesep=b"\r\n"),
            key,
            selector=selector,
            domain=domain,
            identity=None,
            include_headers=headers,
            timestamp=int(timestamp.group(1)) if timestamp else None,
        )
    except Exception as exc:  # Whatever changed, dkimpy's own path still works.
        problem = repr(exc)
    else:
        if ours == expected:
            return key
        problem = "the signatures differ"
    logger.warning(
        "DKIM: signing with OpenSSL does not reproduce dkimpy %s's signature "
        "(%s); dkimpy signs alone, several times slower.",
        _dkimpy_version(),
        problem,
    )
    return None


def _dkimpy_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dkimpy")
    except PackageNotFoundError:
        return "(unknown version)"


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
        key=_fast_key(key),
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
        text = str(path)
        if "-----BEGIN" in text:
            # Never echo it: the error ends up in logs and CI output.
            raise error(
                "'private_key_file' holds the PEM text of a key, not a path: "
                "pass the key itself as 'private_key'."
            )
        # A path is shown; anything longer or stranger may be a secret.
        shown = (
            repr(text)
            if len(text) <= _MAX_PATH_SHOWN and text.isprintable()
            else f"(a value of {len(text)} characters, not shown)"
        )
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise error(
                f"'private_key_file' {shown} cannot be read: {exc.strerror or exc}."
            )
        source = f"the key in {shown}"
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
