"""
A message's size, stored when it is queued; a trigram index for the admin's
search by part of an address, on PostgreSQL.

The admin's search matches part of a recipient's address with
``icontains``, which PostgreSQL runs as ``UPPER(address) LIKE
UPPER('%word%')``. A GIN trigram index on ``UPPER(address)`` answers that
without scanning the table (0005 adds the subject's). It needs
the ``pg_trgm`` extension: created here when the server has it and the
database user may create it (it is a trusted extension since PostgreSQL 13);
otherwise the migration goes on without the index, and search scans. Other
databases get no index: they scan (``_trigram.py``).
"""

from django.db import migrations, models

from ._trigram import trigram_index


class Migration(migrations.Migration):
    dependencies = [
        ("django_mailkit", "0003_resend_link_and_claim_token"),
    ]

    operations = [
        migrations.AddField(
            model_name="outboxmessage",
            name="size",
            field=models.PositiveBigIntegerField(
                blank=True, null=True, verbose_name="size"
            ),
        ),
        trigram_index("mailkit_rcpt_addr_trgm", "recipient", "address"),
    ]
