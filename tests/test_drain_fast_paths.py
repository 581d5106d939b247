"""
The drain path's shortcuts give exactly what the long way gives.

A worker spends its CPU per message, so a few steps of the drain path take
a shorter road than the general code (or Django's) would: each test here
compares a shortcut with the long way on many inputs, the odd ones
included.
"""

import itertools
import random
import re

import pytest

from django_mailkit import delivery, envelope
from django_mailkit.envelope import InvalidAddress, envelope_address
from django_mailkit.models import (
    Attempt,
    OutboxMessage,
)
from django_mailkit.smtp_session import (
    Envelope,
    Job,
    Reply,
    Transmission,
    accepted,
    decode_reply,
)

# --- decode_reply(): a printable text is returned as it is --------------------

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


def _texts():
    # Every code point of the first planes' interesting ranges, alone and
    # inside a reply, and random mixtures.
    points = [
        *range(0x2000),
        *range(0x2000, 0x2100),
        *range(0xD7F0, 0xE010),
        *range(0xFFF0, 0x10000),
        0x10FFFF,
        0xE0001,
    ]
    for point in points:
        yield chr(point)
        yield f"250 2.0.0 Ok{chr(point)}queued"
    rng = random.Random(7)
    for _ in range(2000):
        yield "".join(chr(rng.choice(points)) for _ in range(rng.randrange(12)))


def test_decode_reply_replaces_what_the_regex_replaces():
    for text in _texts():
        assert decode_reply(text) == _CONTROL.sub("\ufffd", text), repr(text)
        data = text.encode("utf-8", "surrogatepass")
        expected = _CONTROL.sub("\ufffd", data.decode("utf-8", "replace"))
        assert decode_reply(data) == expected, repr(data)


def test_decode_reply_of_a_str_subclass_is_a_plain_str():
    class Text(str):
        pass

    assert type(decode_reply(Text("250 Ok"))) is str


# --- Job.finished: whether any recipient is still to be tried ---------------


def test_job_finished_is_whether_todo_is_empty():
    a, b, c = (envelope_address(f"{n}@example.com") for n in "abc")
    reply = Reply(250, b"Ok")
    for recipients in ([a], [a, b, c], [a, b, a], []):
        for in_replies, in_flight in itertools.product(
            itertools.chain.from_iterable(
                itertools.combinations([a, b, c], k) for k in range(4)
            ),
            repeat=2,
        ):
            for error in (None, OSError("lost")):
                job = Job(Envelope(a, list(recipients), False), b"x")
                job.result.replies.update(dict.fromkeys(in_replies, reply))
                job._in_flight.update(set(in_flight) - set(in_replies))
                job.result.error = error
                assert job.finished == (error is not None or not job.todo())


# --- _smtp_outcome(): one pass over the replies --------------------------------


def _kind_the_long_way(codes, error):
    codes = [c for c in codes if c is not None]
    temporary = any(400 <= c < 500 or not 100 <= c <= 599 for c in codes)
    if error is not None or temporary:
        return Attempt.Outcome.RETRY
    if all(accepted(c) for c in codes):
        return Attempt.Outcome.SENT
    if any(accepted(c) for c in codes):
        return Attempt.Outcome.PARTIAL
    return Attempt.Outcome.FAILED


def test_smtp_outcome_classifies_as_the_any_and_all_of_the_codes():
    addresses = [envelope_address(f"r{n}@example.com") for n in range(3)]
    envelope = Envelope(addresses[0], addresses, False)
    codes = [250, 251, 252, 354, 421, 450, 452, 550, 553, 554, -1, 0, 99, 600, 999]
    for count in range(4):
        for combination in itertools.product(codes, repeat=count):
            for error in (None, ConnectionError("lost")):
                replies = {
                    address: Reply(code, b"text")
                    for address, code in zip(addresses, combination, strict=False)
                }
                outcome = delivery._smtp_outcome(
                    Transmission(replies, error=error), envelope
                )
                assert outcome.kind == _kind_the_long_way(combination, error), (
                    combination,
                    error,
                )


# --- envelope_address(): a plain address's path, without _path()'s checks ----

_ATEXT = "abcXYZ0189!#$%&'*+/=?^_`{|}~-"
_LABEL_START = "aZ09_"
_LABEL_INNER = "aZ09_-"


def _simple_addresses():
    rng = random.Random(11)

    def atom():
        return "".join(rng.choice(_ATEXT) for _ in range(rng.randrange(1, 6)))

    def label():
        length = rng.choice([1, 2, 3, 10, 62, 63, 64])
        if length == 1:
            return rng.choice(_LABEL_START)
        inner = "".join(rng.choice(_LABEL_INNER) for _ in range(length - 2))
        return rng.choice(_LABEL_START) + inner + rng.choice(_LABEL_START)

    for _ in range(3000):
        local = ".".join(atom() for _ in range(rng.randrange(1, 4)))
        domain = ".".join(label() for _ in range(rng.randrange(1, 6)))
        if rng.random() < 0.1:
            # Around the 253-character limit of a domain.
            domain = ".".join(["a" * 63] * 3 + ["b" * rng.randrange(58, 63)])
        yield f"{local}@{domain}"
        yield f"Some Name <{local}@{domain}>"


def test_a_plain_address_gets_the_path_the_checks_would_give():

    for text in _simple_addresses():
        match = envelope._SIMPLE.fullmatch(text)
        try:
            # The long way, uncached: every check of the parts.
            expected = envelope._path.__wrapped__("", match["local"], match["domain"])
        except envelope._Reason as reason:
            expected = reason
        except TypeError:  # no match: not a plain address
            continue
        try:
            got = envelope._parse.__wrapped__(text)
        except envelope._Reason as reason:
            got = reason
        if isinstance(expected, Exception):
            assert isinstance(got, Exception), text
            assert str(got) == str(expected), text
        else:
            assert type(got) is type(expected) is envelope.EnvelopeAddress, text
            assert got == expected, text


# --- outcome_fields(): the status found by value --------------------------------


def _record_fields(**changes):
    from django.utils import timezone

    now = timezone.now()
    fields = {
        "outcome": Attempt.Outcome.SENT,
        "attempt_outcome": Attempt.Outcome.PARTIAL,
        "worker": "w",
        "started_at": now,
        "finished_at": now,
        "error": "e",
        "attempt_error": "ae",
        "smtp_code": 250,
        "smtp_reply": "ok",
        "replies": {"a@example.com": (250, "ok")},
        "recipients": {"a@example.com": ("sent", 250, "ok")},
    }
    return {**fields, **changes}


def test_outcome_fields_set_the_status_the_outcome_names():
    from django_mailkit.models import Status

    message = OutboxMessage(attempts=1, requeued_attempts=0)
    for outcome in Attempt.Outcome:
        if outcome == Attempt.Outcome.RETRY:
            continue
        record = _attempt_record(outcome)
        try:
            expected = Status(outcome)
        except ValueError as exc:
            with pytest.raises(ValueError, match=str(exc)):
                message.outcome_fields(record)
            continue
        status = message.outcome_fields(record)["status"]
        assert status == expected and type(status) is Status


def _attempt_record(outcome):
    from django_mailkit.models import AttemptRecord

    return AttemptRecord(**_record_fields(outcome=outcome))


# --- _parse(): the plain-address shortcut and the full parser agree -----------

# Encoded words (RFC 2047) are text the simple pattern matches, but the
# parser decodes them, and may find a line break, a NUL or an unknown
# charset inside: Django refuses such an address, and so must we.
_ENCODED_WORDS = [
    "=?utf-8?q?a=0D=0Ab?= <a@example.com>",
    "=?utf-8?q?a=00b?= <a@example.com>",
    "=?utf-8?b?AAAA?= <a@example.com>",
    "=?utf-8?q?=E2=80=A8?= <a@example.com>",
    "=?utf-8?q?=C2=85?= <a@example.com>",
    "=?x-bogus?q?ab?= <a@example.com>",
    "=?utf-8?q?a?=x <a@example.com>",
    "x =?utf-8?q?=0A?= <a@example.com>",
    "=?utf-8?q?a?=@example.com",
    "a <=?utf-8?q?a?=@example.com>",
    # Accepted both ways:
    "=?utf-8?Q?Andr=C3=A9?= <a@example.com>",
    "a=?utf-8?q?=0A?= <a@example.com>",
    "a=?b@example.com",
]


def _hostile_simple_texts():
    yield from _ENCODED_WORDS
    pieces = [
        *"aZ9!#$%&'*+/=?^_`{|}~-qQbB",
        *["=?", "?=", "=?utf-8?q?", "=?utf-8?b?", "=?us-ascii?Q?", "=?bogus?q?"],
        *["=0D", "=0A", "=00", "=E2=80=A8", "AAAA"],
    ]
    rng = random.Random(13)
    for _ in range(4000):
        name = " ".join(
            "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 4)))
            for _ in range(rng.randrange(3))
        )
        local = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 5)))
        yield f"{name} <{local}@example.com>" if name else f"{local}@example.com"


def _outcome(parse, text):
    try:
        return str(parse(text))
    except envelope._Reason as reason:
        return reason.__class__, str(reason)


def test_a_simple_looking_address_gets_what_the_full_parser_gives(monkeypatch):
    texts = [t for t in _hostile_simple_texts() if envelope._SIMPLE.fullmatch(t)]
    assert len(texts) > 2000
    shortcut = {text: _outcome(envelope._parse.__wrapped__, text) for text in texts}
    # The long way: the simple pattern never matches.
    monkeypatch.setattr(envelope, "_SIMPLE", re.compile("(?!)"))
    for text in texts:
        assert shortcut[text] == _outcome(envelope._parse.__wrapped__, text), text
    # And as a caller sees it: a one-line error that names the address.
    monkeypatch.undo()
    envelope._parse.cache_clear()
    with pytest.raises(InvalidAddress, match=r"non-printables.*\(from_email\)"):
        envelope_address(_ENCODED_WORDS[0], field="from_email")
