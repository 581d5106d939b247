"""Signals sent by django_mailkit."""

from django.dispatch import Signal

__all__ = ["recipients_refused"]

#: Sent by the SMTP backend when the server accepted a message for some
#: recipients and refused others (when it refuses all of them,
#: ``smtplib.SMTPRecipientsRefused`` is raised instead).
#: Sent with ``send_robust`` so one failing receiver cannot stop a batch.
#: kwargs: ``sender`` (the backend class), ``backend`` (the instance),
#: ``message`` (the EmailMessage), ``refused`` (a dict mapping each refused
#: envelope address to ``(smtp_code, reply_text)``) and ``mailer`` (the alias).
recipients_refused = Signal()
