"""
django_mailkit: Django 6.1's email API on Django 5.2, 6.0 and 6.1.

Import from here what you would import from ``django.core.mail``.
"""

from .exceptions import InvalidMailer, MailerDoesNotExist

# DEFAULT_MAILER_ALIAS and MailersHandler: importable, as from Django, but
# not in __all__ (neither is in Django's).
from .handler import DEFAULT_MAILER_ALIAS, MailersHandler, mailers  # noqa: F401
from .legacy import forbid_multi_line_headers
from .legacy import package_getattr as __getattr__  # noqa: F401 (RemovedInDjango2028Warning)
from .message import (
    DEFAULT_ATTACHMENT_MIME_TYPE,
    EmailAlternative,
    EmailAttachment,
    EmailMessage,
    EmailMultiAlternatives,
    make_msgid,
)
from .sending import (
    get_connection,
    mail_admins,
    mail_managers,
    send_mail,
    send_mass_mail,
)
from .utils import DNS_NAME, CachedDnsName

__all__ = [
    "DEFAULT_ATTACHMENT_MIME_TYPE",
    "DNS_NAME",
    "CachedDnsName",
    "EmailAlternative",
    "EmailAttachment",
    "EmailMessage",
    "EmailMultiAlternatives",
    "InvalidMailer",
    "MailerDoesNotExist",
    "get_connection",
    "mail_admins",
    "mail_managers",
    "mailers",
    "make_msgid",
    "send_mail",
    "send_mass_mail",
    # RemovedInDjango2028Warning: the rest (importing them warns, as in
    # Django 6.1).
    "BadHeaderError",
    "SafeMIMEText",
    "SafeMIMEMultipart",
    "forbid_multi_line_headers",
]
