"""
How many times each outbox message was taken back from a worker whose lease
ran out (``OutboxMessage.recoveries``): such a message is sent alone from
then on, and fails once its retry budget is spent.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_mailkit", "0008_limits"),
    ]

    operations = [
        migrations.AddField(
            model_name="outboxmessage",
            name="recoveries",
            field=models.PositiveIntegerField(
                default=0, editable=False, verbose_name="recoveries"
            ),
        ),
    ]
