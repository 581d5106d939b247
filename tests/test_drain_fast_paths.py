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
from django.db import models
from django.test.utils import isolate_apps

from django_mailkit import delivery, envelope
from django_mailkit.envelope import InvalidAddress, envelope_address
from django_mailkit.models import (
    CLAIMED_FIELDS,
    Attempt,
    OutboxMessage,
    RecipientStatus,
)
from django_mailkit.smtp_session import (
    Envelope,
    Job,
    Reply,
    Transmission,
    accepted,
    decode_reply,
)

# --- OutboxMessage.from_db(): a row with deferred fields ---------------------


def _attributes(message):
    values = {k: v for k, v in vars(message).items() if k != "_state"}
    return values, message.get_deferred_fields(), message._state.db


def _field_sets():
    names = [f.attname for f in OutboxMessage._meta.concrete_fields]
    yield ["id", *[n for n in names if n in CLAIMED_FIELDS and n != "id"]]
    yield names  # every field: not deferred at all
    yield names[:1]
    yield names[-1:]
    for name in names:
        yield [name]
        yield [n for n in names if n != name]
    rng = random.Random(5)
    for _ in range(200):
        yield [n for n in names if rng.random() < 0.5]


@pytest.mark.parametrize("as_list", [True, False])
def test_from_db_makes_the_message_djangos_from_db_makes(as_list):
    for names in _field_sets():
        # Distinct values, in the model's field order, as from_db() takes them.
        values = [f"value of {name}" for name in names]
        row = values if as_list else tuple(values)
        ours = OutboxMessage.from_db("default", names, row)
        djangos = models.Model.from_db.__func__(OutboxMessage, "default", names, row)
        assert _attributes(ours) == _attributes(djangos), names
        assert ours._state.adding is djangos._state.adding is False


def test_from_db_loads_claimed_rows_the_orm_way(db):
    message = OutboxMessage.objects.create(
        queued_via="default",
        mailer="smtp",
        from_email="a@example.com",
        mime=b"x",
        size=1,
    )
    loaded = OutboxMessage.objects.only(*CLAIMED_FIELDS).get(pk=message.pk)
    assert loaded.get_deferred_fields() == {
        f.attname
        for f in OutboxMessage._meta.concrete_fields
        if f.attname not in CLAIMED_FIELDS
    }
    assert (loaded.mailer, loaded.from_email, loaded.size) == (
        "smtp",
        "a@example.com",
        1,
    )
    assert bytes(loaded.mime) == b"x"  # a deferred field still loads on use


@pytest.mark.skipif(
    not hasattr(models, "FETCH_PEERS"), reason="fetch modes are new in Django 6.1"
)
def test_from_db_keeps_the_querysets_fetch_mode(db, django_assert_num_queries):
    # Django 6.1 passes the queryset's fetch mode to from_db(): with
    # FETCH_PEERS, a deferred field is loaded for every message at once.
    for n in range(3):
        OutboxMessage.objects.create(
            queued_via="default",
            mailer="smtp",
            from_email="a@example.com",
            mime=b"x",
            subject=f"subject {n}",
        )
    loaded = list(
        OutboxMessage.objects.fetch_mode(models.FETCH_PEERS)
        .only(*CLAIMED_FIELDS)
        .order_by("pk")
    )
    assert "subject" not in CLAIMED_FIELDS
    assert [m._state.fetch_mode for m in loaded] == [models.FETCH_PEERS] * 3
    with django_assert_num_queries(1):
        assert [m.subject for m in loaded] == ["subject 0", "subject 1", "subject 2"]


def _made(make, *args):
    try:
        return _attributes(make(*args))
    except Exception as exc:  # compared with Django's
        return type(exc)


def test_from_db_with_a_row_of_the_wrong_length_does_what_djangos_does():
    # A caller's mistake (more or fewer values than loaded names) is not
    # hidden: the message is what Django's from_db() makes, or its error.
    names = [f.attname for f in OutboxMessage._meta.concrete_fields][::2]
    for extra in (-3, -2, -1, 1, 2):
        values = [f"value {n}" for n in range(len(names) + extra)]
        ours = _made(OutboxMessage.from_db, "default", names, values)
        djangos = _made(
            models.Model.from_db.__func__, OutboxMessage, "default", names, values
        )
        assert ours == djangos, extra


@isolate_apps("django_mailkit")
def test_from_db_of_a_subclass_the_app_registry_does_not_know():
    # A proxy, or a model with more fields, defined in another registry (as
    # isolate_apps() does): its own fields, not a registered model's.
    class Proxy(OutboxMessage):
        class Meta:
            proxy = True
            app_label = "django_mailkit"

    class Child(OutboxMessage):
        note = models.TextField()

        class Meta:
            app_label = "django_mailkit"

    for model in (Proxy, Child):
        names = [f.attname for f in model._meta.concrete_fields]
        for loaded in (names[:3], names[-3:], names[1::2]):
            values = [f"value of {name}" for name in loaded]
            ours = model.from_db("default", loaded, values)
            djangos = models.Model.from_db.__func__(model, "default", loaded, values)
            assert type(ours) is model
            assert _attributes(ours) == _attributes(djangos), (model, loaded)
    _assert_the_shortcut_completes_the_row(Proxy, Child)


def test_the_shortcut_hands_django_a_complete_row():
    # Not only the same message: the shortcut is taken (Django's own loop
    # over the fields, the cost it saves, never runs), whatever is loaded.
    _assert_the_shortcut_completes_the_row(OutboxMessage, field_sets=_field_sets())


def _assert_the_shortcut_completes_the_row(*classes, field_sets=None):
    djangos = models.Model.from_db.__func__
    rows, expected = [], []

    def from_db(cls, db, field_names, values, **kwargs):
        rows.append((cls, len(values)))
        return djangos(cls, db, field_names, values, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models.Model, "from_db", classmethod(from_db))
        for model in classes:
            names = [f.attname for f in model._meta.concrete_fields]
            for loaded in field_sets or (names[:1], names[1::2], names[-2:]):
                model.from_db("default", loaded, [None] * len(loaded))
                expected.append((model, len(names)))
    assert rows == expected


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


# --- The enum members the per-message code uses --------------------------------


@pytest.mark.parametrize(
    "copy, enum",
    [(delivery._Kind, Attempt.Outcome), (delivery._State, RecipientStatus)],
)
def test_the_members_copies_are_the_members(copy, enum):
    names = [name for name in vars(copy) if name.isupper()]
    assert names
    for name in names:
        assert getattr(copy, name) is enum[name]


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


# --- AttemptRecord.of() and outcome_fields() ------------------------------------


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


def test_attempt_record_of_every_field_is_the_constructors_record():
    import dataclasses

    from django_mailkit.models import AttemptRecord

    fields = _record_fields()
    assert set(fields) == {f.name for f in dataclasses.fields(AttemptRecord)}
    fast, slow = AttemptRecord.of(**fields), AttemptRecord(**fields)
    assert fast == slow and vars(fast) == vars(slow)
    assert dataclasses.replace(fast, error="x") == dataclasses.replace(slow, error="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.error = "changed"
    # Not every field, or an unknown one: the constructor's own defaults and
    # errors.
    some = {k: v for k, v in fields.items() if k not in ("error", "replies")}
    assert AttemptRecord.of(**some) == AttemptRecord(**some)
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        AttemptRecord.of(**fields, colour="red")


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

    return AttemptRecord.of(**_record_fields(outcome=outcome))


def test_each_outcome_is_listed_where_batch_result_add_lists_it():
    for kind, result in delivery._RESULTS.items():
        batch = delivery.BatchResult()
        batch.add(result, 7)
        assert getattr(batch, delivery._KIND_LISTS[kind]) == [7]
        assert batch.of(7) is result
    assert set(delivery._KIND_LISTS) == set(delivery._RESULTS)


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
