"""
Priorities: claims take the most urgent due messages first, then the oldest.

The claim's partial index gets the priority first, in the claim's order, so
the claim still reads the index in order and stops at its limit.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_mailkit", "0006_suppression"),
    ]

    operations = [
        migrations.AddField(
            model_name="outboxmessage",
            name="priority",
            field=models.SmallIntegerField(
                choices=[(10, "Bulk"), (20, "Default"), (30, "High")],
                default=20,
                verbose_name="priority",
            ),
        ),
        migrations.RemoveIndex(
            model_name="outboxmessage",
            name="mailkit_ready_idx",
        ),
        migrations.AddIndex(
            model_name="outboxmessage",
            index=models.Index(
                condition=models.Q(("status", "queued")),
                fields=["-priority", "next_attempt_at", "id"],
                name="mailkit_ready_idx",
            ),
        ),
    ]
