"""
The suppression list as CSV, for ``manage.py mailkit_suppressions``.

The format is one header line, then one entry per line::

    address,mailer,reason,smtp_code,smtp_reply,source,created_at

Only ``address`` is required on import; the other columns may be left out
or empty (``mailer`` empty: every mailer; ``reason``: ``imported``;
``created_at``: now; ``source``, when there is no such column: the file).
What ``export`` writes, ``import`` reads back the same.

Every row is checked before anything is written: one bad row, and nothing
is imported; each error is one line naming the line of the file. Importing
the same file twice adds nothing the second time.

Cells that a spreadsheet would run as a formula (starting with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return) are written with a leading ``'``,
and so is a cell that starts with ``'``; import takes one such ``'`` off.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO

from django.db import router, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .exceptions import InvalidAddress
from .models import Suppression, SuppressionReason
from .smtp_session import decode_reply, known_code
from .suppression import normalise

__all__ = [
    "COLUMNS",
    "ImportResult",
    "RowError",
    "export_csv",
    "import_csv",
    "read_csv",
]

COLUMNS = (
    "address",
    "mailer",
    "reason",
    "smtp_code",
    "smtp_reply",
    "source",
    "created_at",
)
#: Rows listed at most in one error (the rest are counted).
MAX_ERRORS_SHOWN = 20
#: Where a spreadsheet may start a cell: the start, or after a separator
#: (whichever its locale uses) or a line break. A formula character there
#: gets a ``'`` before it; import takes exactly those off again.
_DEFUSE = re.compile(r"(^|[;,|\t\r\n])(?=[=+\-@\t\r'])")
_RESTORE = re.compile(r"(^|[;,|\t\r\n])'(?=[=+\-@\t\r'])")
_CHUNK = 500
#: Error lines kept (the rest are counted).
_ERRORS_KEPT = 1000


class RowError(ValueError):
    """
    Rows of a CSV file are invalid: ``errors`` holds one line for each of
    the first ones, ``count`` says how many there are in all.
    """

    def __init__(self, errors: list[str], *, count: int | None = None) -> None:
        self.errors = errors
        self.count = len(errors) if count is None else count
        shown = errors[:MAX_ERRORS_SHOWN]
        more = self.count - len(shown)
        if more:
            shown.append(f"... and {more} more.")
        super().__init__("\n".join(shown))


@dataclass
class ImportResult:
    """What an import did (or, dry, would do)."""

    #: Entries added (or to add).
    new: int = 0
    #: Entries already on the list, left as they are.
    known: int = 0
    #: Rows that repeat an earlier row of the file.
    duplicates: int = 0


def _cell(value: str) -> str:
    return _DEFUSE.sub(r"\1'", value)


def _uncell(value: str) -> str:
    return _RESTORE.sub(r"\1", value)


def export_csv(stream: IO[str], queryset: Iterable[Suppression]) -> int:
    """Write the entries to ``stream`` as CSV, with the header; return how many."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(COLUMNS)
    count = 0
    for row in queryset:
        writer.writerow(
            [
                _cell(value)
                for value in (
                    row.address,
                    row.mailer,
                    row.reason,
                    "" if row.smtp_code is None else str(row.smtp_code),
                    row.smtp_reply,
                    row.source,
                    row.created_at.isoformat(),
                )
            ]
        )
        count += 1
    return count


def read_csv(
    stream: IO[str], *, mailer: str | None = None, source: str = "import"
) -> Iterator[Suppression | str]:
    """
    Read and check the rows one by one: yield an entry (unsaved) for each
    good row, and an error line (a string naming the line) for each bad one.

    ``mailer`` (``--using``) is the mailer of every row: a file whose
    ``mailer`` column names another is refused. ``source`` is recorded on
    rows that don't say theirs. A file that can't be read as CSV at all (no
    header, not UTF-8, broken quoting) raises RowError.
    """
    reader = csv.reader(stream, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise RowError(["the file is empty: it needs a header line."])
        names = [name.strip().lower() for name in header]
        unknown = [name for name in names if name not in COLUMNS]
        if unknown or "address" not in names or len(set(names)) != len(names):
            raise RowError(
                [
                    f"line 1: the header must name 'address' and may name "
                    f"{', '.join(repr(c) for c in COLUMNS[1:])}, each once "
                    f"(got {', '.join(repr(n[:40]) for n in names)})."
                ]
            )
        now = timezone.now()
        for values in reader:
            line = reader.line_num
            if not any(value.strip() for value in values):
                continue  # a blank line
            if len(values) != len(names):
                yield (
                    f"line {line}: {len(values)} cells, but the header names "
                    f"{len(names)} columns."
                )
                continue
            cells = {
                name: _uncell(value) for name, value in zip(names, values, strict=True)
            }
            try:
                yield _entry(cells, mailer=mailer, source=source, now=now)
            except ValueError as exc:
                yield f"line {line}: {exc}"
    except csv.Error as exc:
        yield f"line {reader.line_num}: not valid CSV ({exc})."
    except UnicodeDecodeError as exc:
        yield f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})."


def _entry(
    cells: dict[str, str], *, mailer: str | None, source: str, now: datetime
) -> Suppression:
    raw = cells["address"]
    if not raw.strip():
        raise ValueError("the address is empty.")
    try:
        address = normalise(raw)
    except InvalidAddress as exc:
        raise ValueError(f"invalid address {raw[:80]!r}: {exc.reason}.") from None
    row_mailer = cells.get("mailer", "").strip()
    if mailer is not None:
        if row_mailer and row_mailer != mailer:
            raise ValueError(
                f"the row's mailer {row_mailer[:40]!r} is not --using {mailer!r}."
            )
        row_mailer = mailer
    if len(row_mailer) > 100:
        raise ValueError("the mailer alias is longer than 100 characters.")
    reason = cells.get("reason", "").strip() or SuppressionReason.IMPORTED
    if reason not in SuppressionReason.values:
        raise ValueError(
            f"the reason must be one of {', '.join(SuppressionReason.values)} "
            f"(got {reason[:40]!r})."
        )
    code_text = cells.get("smtp_code", "").strip()
    code: int | None = None
    if code_text:
        if not code_text.isdigit() or not known_code(int(code_text)):
            raise ValueError(
                f"the SMTP code must be a reply code from 100 to 599 "
                f"(got {code_text[:20]!r})."
            )
        code = int(code_text)
    # A file with a source column says each row's (empty too): export, then
    # import, gives the same rows. Without one, the import is the source.
    row_source = cells["source"].strip() if "source" in cells else source
    if len(row_source) > 200:
        raise ValueError("the source is longer than 200 characters.")
    created = now
    created_text = cells.get("created_at", "").strip()
    if created_text:
        try:
            parsed = parse_datetime(created_text)
        except ValueError:
            parsed = None
        if parsed is None:
            raise ValueError(
                f"created_at must be an ISO 8601 date and time "
                f"(got {created_text[:40]!r})."
            )
        if timezone.is_naive(parsed):
            parsed = timezone.make_aware(parsed)
        created = parsed
    return Suppression(
        address=address,
        mailer=row_mailer,
        reason=reason,
        smtp_code=code,
        smtp_reply=decode_reply(cells.get("smtp_reply", "")),
        source=decode_reply(row_source),
        created_at=created,
    )


def import_csv(
    stream: IO[str],
    *,
    mailer: str | None = None,
    source: str = "import",
    dry_run: bool = False,
    using: str | None = None,
) -> ImportResult:
    """
    Add the file's entries to the list, in one transaction; say what it did.

    Raises RowError, having written nothing, if any row is invalid (every
    bad row is listed). An entry already listed (same address and mailer)
    is left as it is. Rows are read and written 500 at a time: a file of
    millions of rows needs memory for its distinct addresses only.
    """
    db = using or router.db_for_write(Suppression)
    result = ImportResult()
    errors: list[str] = []
    bad = 0
    seen: set[tuple[str, str]] = set()
    chunk: list[Suppression] = []

    def flush() -> None:
        if errors or not chunk:
            chunk.clear()
            return  # nothing is written once a row failed
        known: set[tuple[str, str]] = set()
        for mailer_name in {row.mailer for row in chunk}:
            known |= {
                (address, mailer_name)
                for address in Suppression.objects.using(db)
                .filter(
                    mailer=mailer_name,
                    address__in=[r.address for r in chunk if r.mailer == mailer_name],
                )
                .values_list("address", flat=True)
            }
        new = [row for row in chunk if (row.address, row.mailer) not in known]
        result.known += len(chunk) - len(new)
        result.new += len(new)
        if not dry_run:
            Suppression.objects.using(db).bulk_create(new, ignore_conflicts=True)
        chunk.clear()

    with transaction.atomic(using=db):
        for item in read_csv(stream, mailer=mailer, source=source):
            if isinstance(item, str):
                bad += 1
                if len(errors) < _ERRORS_KEPT:
                    errors.append(item)
                continue
            key = (item.address, item.mailer)
            if key in seen:
                result.duplicates += 1
                continue
            seen.add(key)
            chunk.append(item)
            if len(chunk) >= _CHUNK:
                flush()
        flush()
        if errors:
            raise RowError(errors, count=bad)  # and the transaction rolls back
    return result
