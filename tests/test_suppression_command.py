"""``manage.py mailkit_suppressions``: CSV in, CSV out, every row checked."""

import csv
import io
import re
from datetime import UTC, datetime

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from django_mailkit.models import Suppression
from django_mailkit.suppression import suppress

pytestmark = pytest.mark.django_db

MAILERS = {
    "default": {
        "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
        "OPTIONS": {"deliver_using": "smtp"},
    },
    "newsletter": {
        "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
        "OPTIONS": {"deliver_using": "smtp"},
    },
    "smtp": {"BACKEND": "django_mailkit.backends.locmem.EmailBackend"},
}


def stored():
    """Every entry's every field (but its id), in a stable order."""
    return sorted(
        Suppression.objects.values_list(
            "address",
            "mailer",
            "reason",
            "smtp_code",
            "smtp_reply",
            "source",
            "created_at",
        )
    )


@pytest.fixture(autouse=True)
def mailers_configured():
    with override_settings(MAILERS=MAILERS):
        yield


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("mailkit_suppressions", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def write(tmp_path, text, name="list.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return str(path)


def entries():
    return sorted(
        Suppression.objects.values_list("address", "mailer", "reason", "source")
    )


def test_import_is_checked_normalised_and_idempotent(tmp_path):
    path = write(
        tmp_path,
        "\ufeffAddress\nAnn <ANN@Example.com>\nbob@example.com\n\nann@example.com\n",
    )
    out, _ = run("import", path)
    assert out == "Imported 2 new addresses; 0 already listed, 1 duplicate row.\n"
    assert entries() == [
        ("ann@example.com", "", "imported", "import of list.csv"),
        ("bob@example.com", "", "imported", "import of list.csv"),
    ]
    out, _ = run("import", path)
    assert out == "Imported 0 new addresses; 2 already listed, 1 duplicate row.\n"
    assert len(entries()) == 2


def test_import_for_one_mailer(tmp_path):
    path = write(
        tmp_path, "address,mailer\nann@example.com,\nbob@example.com,newsletter\n"
    )
    run("import", path, "--using", "newsletter")
    assert [(a, m) for a, m, _r, _s in entries()] == [
        ("ann@example.com", "newsletter"),
        ("bob@example.com", "newsletter"),
    ]
    other = write(tmp_path, "address,mailer\ncat@example.com,default\n", "other.csv")
    with pytest.raises(CommandError, match="1 invalid row; nothing was imported"):
        run("import", other, "--using", "newsletter")


def test_every_bad_row_is_one_line_naming_it_and_nothing_is_written(tmp_path):
    path = write(
        tmp_path,
        "address,reason,smtp_code,created_at\n"
        "good@example.com,,,\n"
        '"evil@example.com\r\nRCPT TO:<x@example.com>",,,\n'
        "nodomain,,,\n"
        "a@example.com,angry,,\n"
        "b@example.com,,999,\n"
        "c@example.com,,,yesterday\n"
        "d@example.com,,\n",
    )
    err = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("mailkit_suppressions", "import", path, stderr=err)
    assert str(caught.value).endswith("list.csv: 6 invalid rows; nothing was imported.")
    lines = err.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "line 4",  # the quoted CR LF makes the row two lines long
        "line 5",
        "line 6",
        "line 7",
        "line 8",
        "line 9",
    ]
    assert "invalid address 'evil@example.com\\r\\nRCPT TO:<x@example.com>'" in lines[0]
    assert "control character" in lines[0]
    assert lines[1] == "line 5: invalid address 'nodomain': it has no domain."
    assert (
        "the reason must be one of bounced, unsubscribed, imported (got 'angry')"
        in lines[2]
    )
    assert "the SMTP code must be a reply code from 100 to 599 (got '999')" in lines[3]
    assert "created_at must be an ISO 8601 date and time (got 'yesterday')" in lines[4]
    assert lines[5] == "line 9: 3 cells, but the header names 4 columns."
    assert not Suppression.objects.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "the file is empty"),
        ("email\nann@example.com\n", "line 1: the header must name 'address'"),
        ("address,address\nann@example.com,x\n", "line 1: the header must name"),
        (b"address\n\xff\xfe@example.com\n", "not UTF-8 text"),
    ],
)
def test_bad_files(tmp_path, content, message):
    path = write(tmp_path, content)
    err = io.StringIO()
    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("mailkit_suppressions", "import", path, stderr=err)
    assert message in err.getvalue()
    assert not Suppression.objects.exists()


def test_dry_run_writes_nothing(tmp_path):
    path = write(tmp_path, "address\nann@example.com\n")
    out, _ = run("import", path, "--dry-run")
    assert out.startswith("Would import 1 new address;")
    assert not Suppression.objects.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--using", "nope"],
            "--using: there is no mailer 'nope'. Configured mailers: ",
        ),
        (["--using", "smtp"], "--using: 'smtp' is not an outbox mailer"),
    ],
)
def test_using_is_checked(tmp_path, args, message):
    path = write(tmp_path, "address\nann@example.com\n")
    for action in (["import", path], ["export"]):
        with pytest.raises(CommandError) as caught:
            run(*action, *args)
        assert str(caught.value).startswith(message)


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(
        CommandError, match=r"^.*missing\.csv: No such file or directory\.$"
    ):
        run("import", str(tmp_path / "missing.csv"))


def test_export_then_import_round_trips_and_defuses_formulas(tmp_path):
    when = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    suppress(
        ["=1+2@example.com"],
        reason="bounced",
        mailer="newsletter",
        smtp_code=550,
        smtp_reply='=HYPERLINK("http://evil.example")',
        source="outbox message 7",
        created_at=when,
    )
    suppress(["'quoted@example.com"], reason="unsubscribed", created_at=when)
    suppress(["plain@example.com"], reason="imported", created_at=when)
    out, _ = run("export")
    assert out.splitlines() == [
        "address,mailer,reason,smtp_code,smtp_reply,source,created_at",
        "'=1+2@example.com,newsletter,bounced,550,"
        '"\'=HYPERLINK(""http://evil.example"")",'
        "outbox message 7,2026-11-30T12:00:00+00:00",
        "''quoted@example.com,,unsubscribed,,,,2026-11-30T12:00:00+00:00",
        "plain@example.com,,imported,,,,2026-11-30T12:00:00+00:00",
    ]
    before = stored()
    path = str(tmp_path / "out.csv")
    out, _ = run("export", path)
    assert out == f"Exported 3 entries to {path}.\n"
    Suppression.objects.all().delete()
    run("import", path)
    after = stored()
    assert after == before


def test_export_filters():
    suppress(["a@example.com"], reason="bounced", mailer="newsletter")
    suppress(["b@example.com"], reason="unsubscribed")
    out, _ = run("export", "--using", "newsletter")
    assert [line.split(",")[0] for line in out.splitlines()] == [
        "address",
        "a@example.com",
    ]
    out, _ = run("export", "--reason", "unsubscribed")
    assert [line.split(",")[0] for line in out.splitlines()] == [
        "address",
        "b@example.com",
    ]


def test_mailkit_outbox_show_says_why_a_recipient_was_suppressed():
    from django_mailkit import EmailMessage, mailers
    from django_mailkit.models import OutboxMessage
    from django_mailkit.worker import Worker

    suppress(["ann@example.com"], reason="unsubscribed", source="one-click\x1b[2J")
    message = EmailMessage("Hi", "body", "f@example.com", ["ann@example.com"])
    with override_settings(MAILKIT={"USE_TASKS": False}):
        assert mailers["default"].send_messages([message]) == 1
        Worker(once=True, interval=0).run()
    record = OutboxMessage.objects.get()
    out = io.StringIO()
    call_command("mailkit_outbox", "show", str(record.pk), stdout=out)
    (line,) = [x for x in out.getvalue().splitlines() if "ann@example.com:" in x]
    assert line.startswith(
        "    ann@example.com: suppressed (Suppressed for every mailer"
    )
    # The stored reason was cleaned when written: no escape reaches a terminal.
    assert "Unsubscribed; source: one-click\ufffd[2J." in line


def test_a_bad_row_after_many_good_ones_still_imports_nothing(tmp_path):
    # Rows are written 500 at a time: the first chunks went to the database
    # before the bad row was read, and must be rolled back.
    rows = [f"user{i}@example.com" for i in range(1200)]
    rows += ["oops"] * 30
    path = write(tmp_path, "address\n" + "\n".join(rows) + "\n")
    err = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("mailkit_suppressions", "import", path, stderr=err)
    assert str(caught.value).endswith("30 invalid rows; nothing was imported.")
    lines = err.getvalue().splitlines()
    assert lines[0] == "line 1202: invalid address 'oops': it has no domain."
    assert lines[-1] == "... and 10 more."
    assert len(lines) == 21
    assert not Suppression.objects.exists()
    path = write(tmp_path, "address\n" + "\n".join(rows[:1200]) + "\n", "ok.csv")
    out, _ = run("import", path)
    assert out.startswith("Imported 1200 new addresses;")
    assert Suppression.objects.count() == 1200


def test_a_formula_after_a_separator_inside_a_cell_is_defused(tmp_path):
    # A hostile server's reply: a spreadsheet whose list separator is ";"
    # splits the cell there and would run what follows.
    reply = "5.1.1 unknown;=cmd|' /C calc'!A0"
    suppress(["gone@example.com"], reason="bounced", smtp_code=550, smtp_reply=reply)
    tricky = "a;'b,+c|-d\t@e\n=f;g"
    suppress(["x@example.com"], reason="bounced", smtp_code=550, smtp_reply=tricky)
    out, _ = run("export")
    assert "5.1.1 unknown;'=cmd|'' /C calc'!A0" in out
    # No separator in any cell is followed by a formula character.
    for cell in (c for line in csv.reader(io.StringIO(out)) for c in line):
        assert not re.search(r"[;,\t|\r\n][=+\-@\t\r]", cell), cell
    path = tmp_path / "out.csv"
    path.write_text(out, encoding="utf-8")
    Suppression.objects.all().delete()
    run("import", str(path))
    assert dict(Suppression.objects.values_list("address", "smtp_reply")) == {
        "gone@example.com": reply,
        "x@example.com": tricky,
    }
