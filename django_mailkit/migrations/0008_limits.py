"""
The limits a transport mailer's delivery keeps across every worker: a token
bucket per mailer (``rate``), and leased connection slots
(``max_connections_total``). See ``django_mailkit.limits``.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_mailkit", "0007_priority"),
    ]

    operations = [
        migrations.CreateModel(
            name="MailerLimit",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True,
                        primary_key=True,
                        serialize=False,
                        verbose_name="ID",
                    ),
                ),
                (
                    "mailer",
                    models.CharField(
                        max_length=100, unique=True, verbose_name="mailer"
                    ),
                ),
                ("tokens", models.FloatField(default=0, verbose_name="tokens")),
                ("stamp", models.FloatField(default=0, verbose_name="counted at")),
                (
                    "granted",
                    models.PositiveIntegerField(default=0, verbose_name="last granted"),
                ),
            ],
            options={
                "verbose_name": "mailer rate limit",
                "verbose_name_plural": "mailer rate limits",
            },
        ),
        migrations.CreateModel(
            name="ConnectionSlot",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True,
                        primary_key=True,
                        serialize=False,
                        verbose_name="ID",
                    ),
                ),
                ("mailer", models.CharField(max_length=100, verbose_name="mailer")),
                ("number", models.PositiveIntegerField(verbose_name="number")),
                (
                    "holder",
                    models.CharField(blank=True, max_length=250, verbose_name="holder"),
                ),
                ("expires", models.FloatField(default=0, verbose_name="expires")),
            ],
            options={
                "verbose_name": "connection slot",
                "verbose_name_plural": "connection slots",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("mailer", "number"), name="mailkit_slot_unique"
                    )
                ],
            },
        ),
    ]
