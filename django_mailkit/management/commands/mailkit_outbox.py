"""``manage.py mailkit_outbox``: inspect and maintain the outbox."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections, router
from django.db.models import Count
from django.utils import timezone

from ... import _sql, conf
from ...handler import mailers
from ...models import FINAL_STATUSES, OutboxMessage, RecipientStatus, Status
from ..options import MAX_COUNT, MAX_DAYS, MAX_ID, mailer_alias, printable, whole_number

STATUSES = [value for value, _ in Status.choices]


class Command(BaseCommand):
    help = (
        "List, show, requeue, cancel or purge outbox messages; list or drop "
        "the worker's record functions."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        listing = sub.add_parser("list", help="List messages, newest first.")
        listing.add_argument("--status", choices=STATUSES, action="append")
        listing.add_argument("--using", metavar="ALIAS", help="Only this mailer.")
        listing.add_argument("--recipient", help="Only messages to this address.")
        # Numbers and aliases are checked in handle(), so that a bad value is
        # one line (CommandError) from the shell and from call_command().
        listing.add_argument("--limit", default=50, metavar="N")

        show = sub.add_parser("show", help="Show one message and its attempts.")
        show.add_argument("id")

        requeue = sub.add_parser(
            "requeue",
            help="Queue failed and partially sent messages again (partially "
            "sent ones for their refused recipients only).",
        )
        requeue.add_argument("ids", nargs="*")
        requeue.add_argument(
            "--all-failed",
            action="store_true",
            help="Every failed message, and every partially sent one for the "
            "recipients that did not accept it.",
        )
        requeue.add_argument("--using", metavar="ALIAS", help="Only this mailer.")

        cancel = sub.add_parser("cancel", help="Cancel queued messages.")
        cancel.add_argument("ids", nargs="+")

        purge = sub.add_parser("purge", help="Delete old messages.")
        purge.add_argument(
            "--older-than",
            metavar="DAYS",
            help="Age in days (default: MAILKIT['RETENTION_DAYS']).",
        )
        purge.add_argument(
            "--status",
            choices=[s for s in STATUSES if s in FINAL_STATUSES],
            action="append",
            help="Only these statuses (default: every final status).",
        )
        purge.add_argument("--dry-run", action="store_true")

        functions = sub.add_parser(
            "functions",
            help="List the worker's record functions in the outbox's database "
            "(PostgreSQL): those not marked as this version's are what "
            "--drop-old drops.",
        )
        functions.add_argument(
            "--drop-old",
            action="store_true",
            help="Drop those of other versions (their workers, if any still run, "
            "send the statement itself instead). Run it from the newest version: "
            "from an older one it drops the newer one's.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options.get("using") is not None:
            options["using"] = self._mailer(options["using"])
        getattr(self, f"handle_{options['action']}")(options)

    def handle_list(self, options: dict[str, Any]) -> None:
        qs = OutboxMessage.objects.all()
        if options["status"]:
            qs = qs.filter(status__in=options["status"])
        if options["using"]:
            qs = qs.filter(mailer=options["using"])
        if options["recipient"]:
            qs = qs.filter(recipient_set__address__iexact=options["recipient"])
        limit = whole_number("--limit", options["limit"], minimum=1, maximum=MAX_COUNT)
        rows = qs.order_by("-created_at", "-id")[:limit]
        for m in rows:
            recipients = m.recipients if isinstance(m.recipients, list) else []
            self.stdout.write(
                f"{m.pk:>8}  {m.created_at:%Y-%m-%d %H:%M:%S}  {m.status:<9} "
                f"{printable(m.mailer):<12} {m.attempts:>2}  "
                f"{printable(', '.join(map(str, recipients)))[:40]:<40}  "
                f"{printable(m.subject[:60])}"
            )

    def handle_show(self, options: dict[str, Any]) -> None:
        m = self._get(options["id"])
        out = self.stdout
        p = printable
        out.write(f"Message {m.pk}: {p(m.subject)}")
        out.write(f"  Message-ID: {p(m.message_id)}")
        out.write(f"  Status:     {m.status} after {m.attempts} attempt(s)")
        if m.recoveries:
            out.write(
                f"  Recovered:  {m.recoveries} time(s) from a worker that stopped "
                "(died, or stalled past its lease) while it held the message"
            )
        out.write(f"  Mailer:     {p(m.mailer)} (queued via {p(m.queued_via)})")
        out.write(f"  From:       {p(m.from_email)}")
        out.write(f"  Created:    {m.created_at:%Y-%m-%d %H:%M:%S %Z}")
        if m.sent_at:
            out.write(f"  Sent:       {m.sent_at:%Y-%m-%d %H:%M:%S %Z}")
        if m.status == Status.QUEUED:
            out.write(f"  Next try:   {m.next_attempt_at:%Y-%m-%d %H:%M:%S %Z}")
        if m.last_error:
            out.write(f"  Error:      {p(m.last_error)}")
        out.write("  Recipients:")
        for r in m.recipient_set.all():
            reply = f" {r.smtp_code} {p(r.smtp_reply)}" if r.smtp_code else ""
            if r.status == RecipientStatus.SUPPRESSED and r.smtp_reply:
                reply = f" ({p(r.smtp_reply)})"  # why: no server said anything
            out.write(f"    {p(r.address)}: {r.status}{reply}")
        out.write("  Attempts:")
        for a in m.attempt_set.all():
            reply = f" {a.smtp_code} {p(a.smtp_reply)}" if a.smtp_code else ""
            out.write(
                f"    #{a.number} {a.started_at:%Y-%m-%d %H:%M:%S} {a.outcome}{reply}"
                + (f" ({p(a.error)})" if a.error else "")
            )

    def handle_requeue(self, options: dict[str, Any]) -> None:
        if options["all_failed"]:
            qs = OutboxMessage.objects.filter(
                status__in=[Status.FAILED, Status.PARTIAL]
            )
            if options["using"]:
                qs = qs.filter(mailer=options["using"])
            ids = list(qs.values_list("pk", flat=True))
        elif options["ids"]:
            ids = [self._get(pk).pk for pk in options["ids"]]
        else:
            raise CommandError("Give message ids, or --all-failed.")
        requeueable = dict(
            OutboxMessage.objects.filter(
                pk__in=ids, status__in=[Status.FAILED, Status.PARTIAL]
            ).values_list("pk", "status")
        )
        # Failed and partially sent (for their failed recipients); delivery
        # is enqueued when the requeue commits.
        count = OutboxMessage.objects.filter(pk__in=requeueable).requeue(
            include_partial=True
        )
        skipped = [pk for pk in ids if pk not in requeueable]
        partial = sum(1 for status in requeueable.values() if status == Status.PARTIAL)
        self.stdout.write(
            f"Requeued {count} message(s): {len(requeueable) - partial} failed, "
            f"{partial} partially sent (only the recipients that did not "
            "accept it are retried)."
        )
        if skipped:
            self.stderr.write(
                f"Not failed, so not requeued: {', '.join(map(str, skipped))}."
            )

    def handle_cancel(self, options: dict[str, Any]) -> None:
        messages = [self._get(pk) for pk in options["ids"]]
        done = [m.pk for m in messages if m.cancel()]
        self.stdout.write(f"Cancelled {len(done)} message(s).")
        skipped = [m.pk for m in messages if m.pk not in done]
        if skipped:
            raise CommandError(
                f"Not queued (already sending or done), so not cancelled: "
                f"{', '.join(map(str, skipped))}."
            )

    def handle_purge(self, options: dict[str, Any]) -> None:
        if options["older_than"] is None:
            days = conf.retention_days()
            if not 0 <= days <= MAX_DAYS:
                raise CommandError(
                    f"MAILKIT['RETENTION_DAYS'] must be from 0 to {MAX_DAYS} days "
                    f"(got {days}); or give --older-than."
                )
        else:
            days = whole_number(
                "--older-than", options["older_than"], minimum=0, maximum=MAX_DAYS
            )
        statuses = options["status"] or sorted(FINAL_STATUSES)
        cutoff = timezone.now() - timedelta(days=days)
        qs = OutboxMessage.objects.filter(status__in=statuses, created_at__lt=cutoff)
        counts = dict(qs.values_list("status").annotate(n=Count("id")).order_by())
        total = sum(counts.values())
        detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
        if options["dry_run"]:
            self.stdout.write(
                f"Would delete {total} message(s) older than {days} days ({detail})."
            )
            return
        qs.delete()
        self.stdout.write(
            f"Deleted {total} message(s) older than {days} days ({detail})."
        )

    def handle_functions(self, options: dict[str, Any]) -> None:
        db = router.db_for_write(OutboxMessage)
        vendor = connections[db].vendor
        if vendor != "postgresql":
            self.stdout.write(
                f"Record functions are installed on PostgreSQL only; the "
                f"outbox's database {db!r} is {vendor}: nothing to do."
            )
            return
        if options["drop_old"]:
            if _sql.record_functions(db)[1] is None:
                raise CommandError(
                    f"This version's record function is not installed on {db!r}, "
                    f"so --drop-old drops nothing: run migrate first."
                )
            try:
                dropped = _sql.drop_record_functions(db)
            except DatabaseError as error:
                reason = printable(str(error).strip().splitlines()[0])
                raise CommandError(
                    f"No record function was dropped on {db!r}: {reason}"
                ) from None
            for signature in dropped:
                self.stdout.write(f"Dropped {printable(signature)}")
            self.stdout.write(
                f"Dropped {len(dropped)} record function(s) of other versions "
                f"on {db!r}."
            )
        found, current = _sql.record_functions(db)
        for signature in found:
            mark = "  (this version's)" if signature == current else ""
            self.stdout.write(f"{printable(signature)}{mark}")
        if current is None:
            self.stdout.write(
                f"This version's record function is not installed on {db!r}: "
                f"workers send the statement itself. Run migrate to install it."
            )
        elif current not in found:
            self.stdout.write(
                f"This version's record function is {printable(current)}, "
                f"further along the search path: workers use it."
            )

    def _get(self, value: Any) -> OutboxMessage:
        pk = whole_number("A message id", value, minimum=1, maximum=MAX_ID)
        try:
            return OutboxMessage.objects.get(pk=pk)
        except OutboxMessage.DoesNotExist:
            raise CommandError(f"No outbox message with id {pk}.") from None

    def _mailer(self, alias: str) -> str:
        """A configured mailer alias, or one that outbox rows still name."""
        if alias in mailers.aliases():
            return alias
        if OutboxMessage.objects.filter(mailer=alias).exists():
            return alias  # a mailer removed from the settings, still on record
        return mailer_alias("--using", alias)
