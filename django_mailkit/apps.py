from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


class MailkitConfig(AppConfig):
    name = "django_mailkit"
    label = "django_mailkit"
    verbose_name = _("Mail")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from ._sql import install_record_function
        from .compat import install_test_environment_hooks

        install_test_environment_hooks()
        # The outbox's record statement as a PostgreSQL function (_sql).
        post_migrate.connect(install_record_function, sender=self)
