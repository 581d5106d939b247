"""
django_mailkit: Django 6.1's email API on Django 5.2, 6.0 and 6.1.

Import from here what you would import from ``django.core.mail``.
"""

from .exceptions import InvalidMailer, MailerDoesNotExist
from .handler import mailers
from .message import (
    DEFAULT_ATTACHMENT_MIME_TYPE,
    DNS_NAME,
    BadHeaderError,
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

__all__ = [
    "DEFAULT_ATTACHMENT_MIME_TYPE",
    "DNS_NAME",
    "BadHeaderError",
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
]
