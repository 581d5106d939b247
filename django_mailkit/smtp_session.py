"""
SMTP mail transactions over smtplib connections.

The SMTP backend hands this module :class:`Job` objects (one message each:
its checked :class:`~django_mailkit.envelope.Envelope` and its bytes) and a
way to open connections; :func:`run_jobs` sends them and fills in each job's
per-recipient replies.

* **Pipelining** (RFC 2920): when the server offers it, MAIL, every RCPT and
  DATA go in one write, and a message's content goes in the same write as
  the next transaction's commands, so a message costs about one round trip.
* **Recipient chunking**: a transaction carries at most
  ``max_recipients`` recipients (RFC 5321 section 4.5.3.1.8 requires servers
  to accept at least 100). When the server answers 452 to some recipients
  after accepting others in the same transaction (its own limit is lower),
  the accepted ones get the message and the rest go in the next transaction
  at once. Every transaction sends the same bytes, so each recipient gets an
  identical copy (same Message-ID).
* **Parallel connections**: a large batch may be spread over several
  connections (see :func:`run_jobs`).

Only :class:`~django_mailkit.envelope.EnvelopeAddress` values, made by
``envelope_address()``, are ever written as paths: anything else is refused
before a byte is sent.
"""

from __future__ import annotations

import re
import smtplib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .envelope import Envelope, EnvelopeAddress
from .exceptions import SMTPUTF8Unsupported

__all__ = [
    "DEFAULT_MAX_RECIPIENTS",
    "Job",
    "NotStarted",
    "Reply",
    "Transmission",
    "accepted",
    "decode_reply",
    "known_code",
    "run_jobs",
]

#: Recipients per mail transaction unless configured otherwise: the minimum
#: RFC 5321 (section 4.5.3.1.8) requires every server to accept.
DEFAULT_MAX_RECIPIENTS = 100
#: Pipelined messages per extra connection before another is worth opening.
PER_CONNECTION = 8
#: "Too many recipients" (RFC 5321 section 4.5.3.1.10) when it follows
#: accepted recipients in the same transaction.
TOO_MANY_RECIPIENTS = 452


def accepted(code: int | None) -> bool:
    """
    Whether a reply code accepts (a recipient, the sender or the message).

    Any 2yz reply: RFC 5321 section 4.2.1 calls them all "positive
    completion". This is the one definition of accepted in the app. It is
    wider than smtplib's {250, 251} on purpose: a server that says 252 to
    RCPT has taken the recipient into the transaction, so treating it as
    refused would send the message to that recipient again later.
    """
    return code is not None and 200 <= code < 300


class Reply(NamedTuple):
    """One SMTP reply."""

    code: int
    text: bytes


#: Control characters other than tab and newline: a reply is stored in text
#: columns, and PostgreSQL refuses a NUL in one. And lone surrogates (text
#: decoded with "surrogateescape", as the email package does, may reach an
#: exception's message): no database driver can encode one.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


def decode_reply(reply: bytes | str) -> str:
    """
    An SMTP reply as text that can be stored: servers may send any bytes.

    Undecodable bytes, control characters (a NUL among them) and lone
    surrogates become U+FFFD.
    """
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    if type(text) is str and text.isprintable():
        # The common case, and a cheap test: a printable text has none of
        # _CONTROL's characters (all of them are unprintable), so there is
        # nothing to replace.
        return text
    return _CONTROL.sub("\ufffd", text)


def known_code(code: int | None) -> bool:
    """
    Whether ``code`` is a reply code at all (100 to 599).

    smtplib reports a reply whose first three characters are not a number
    as -1: an unknown reply, treated as a temporary failure and stored
    without a code.
    """
    return code is not None and 100 <= code <= 599


@dataclass
class Transmission:
    """What the server said about one message."""

    #: The reply that decided each recipient's fate: the reply to RCPT TO
    #: when it refused the recipient, else the reply to DATA or to the
    #: message content. Recipients missing here were never tried (the
    #: connection was lost first; see ``error``).
    replies: dict[EnvelopeAddress, Reply]
    #: The last reply to DATA or to the content, if any transaction got
    #: that far.
    data_reply: Reply | None = None
    #: Why the message stopped short of every recipient, if it did.
    error: BaseException | None = None
    #: How many mail transactions it took.
    transactions: int = 0
    #: The recipients in ``replies`` whose reply is the one to their own
    #: RCPT TO (a refusal that is about the address, unlike DATA's).
    refused_at_rcpt: set[EnvelopeAddress] = field(default_factory=set)


#: Writes smaller than this are joined into one (one packet for a pipelined
#: transaction); a larger piece, such as a message's bytes, goes as it is.
_COALESCE = 64 * 1024
_LEADING_DOT = re.compile(rb"(?m)^\.")
_LINE_END = re.compile(rb"\r\n|\r|\n")


def _crlf(data: bytes) -> bytes:
    """``data`` with every line ending as CRLF (as smtplib.sendmail does)."""
    crlf = data.count(b"\r\n")
    if data.count(b"\r") == crlf and data.count(b"\n") == crlf:
        return data
    return _LINE_END.sub(b"\r\n", data)


@dataclass(eq=False)
class Job:
    """One message on its way: its envelope, its bytes, and its progress."""

    envelope: Envelope
    data: bytes
    #: The EmailMessage it came from, if any (for the caller).
    message: Any = None
    message_id: str = ""
    #: Asked before each transaction after the first: False stops the job
    #: (the outbox's lease on the message was lost: another worker has it).
    keep_going: Callable[[], bool] | None = None
    #: Asked right before the job's first transaction is written: False
    #: leaves the job, and every job after it not started yet, untried
    #: (their results' error is ``NotStarted``; an exception raised here is
    #: the job's error instead). With PIPELINING the job before's content
    #: is still unsent when it is asked, so it must answer at once: no
    #: database call, no waiting.
    may_start: Callable[[], bool] | None = None
    result: Transmission = field(init=False)
    # Recipients accepted in a transaction whose content is still unanswered.
    _in_flight: set[EnvelopeAddress] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        envelope = self.envelope
        _check_path(envelope.sender)
        for path in envelope.recipients:
            if type(path) is not EnvelopeAddress:
                _check_path(path)  # raises
        self.data = _crlf(self.data)
        self.result = Transmission({})

    @property
    def finished(self) -> bool:
        # ``not self.todo()``, without building the list: it is asked
        # several times per message.
        result = self.result
        if result.error is not None:
            return True
        replies, in_flight = result.replies, self._in_flight
        for r in self.envelope.recipients:
            if r not in replies and r not in in_flight:
                return False
        return True

    @property
    def answered(self) -> bool:
        """Whether every recipient has the reply that decides it."""
        replies = self.result.replies
        return all(r in replies for r in self.envelope.recipients)

    @property
    def started(self) -> bool:
        return bool(self.result.replies or self._in_flight)

    def todo(self) -> list[EnvelopeAddress]:
        """The recipients still to be tried."""
        replies, in_flight = self.result.replies, self._in_flight
        return [
            r
            for r in self.envelope.recipients
            if r not in replies and r not in in_flight
        ]

    def content(self) -> list[bytes]:
        """
        The DATA content, dot-stuffed and ending with CRLF and the final dot,
        in pieces: a large message is never copied to add its last line.
        """
        data = self.data
        # Only a line that starts with a dot is stuffed; looking for one
        # first is a fast substring search, where the regex would try a
        # match at every byte (a tenth of a worker's CPU per message).
        if data.startswith(b".") or b"\n." in data:
            data = _LEADING_DOT.sub(b"..", data)
        return [data, b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"]

    def stop(self, error: BaseException) -> None:
        """End this job: what is still untried or in flight stays unknown."""
        if self.result.error is None:
            self.result.error = error
        self._in_flight.clear()

    def finish_transaction(
        self, recipients: list[EnvelopeAddress], reply: Reply
    ) -> None:
        """Record the reply to the content for the recipients it carried."""
        for address in recipients:
            self.result.replies[address] = reply
            self._in_flight.discard(address)
        self.result.data_reply = reply


def _check_path(path: Any) -> EnvelopeAddress:
    # The last line of defence against command injection: a path that
    # didn't come through envelope_address() is never written.
    if type(path) is not EnvelopeAddress:
        raise TypeError(
            f"Refusing to write {path!r} as an SMTP path: only addresses "
            "checked by django_mailkit.envelope.envelope_address() are sent."
        )
    return path


class ConnectionLost(smtplib.SMTPServerDisconnected):
    """The connection broke, or the server said 421, mid-conversation."""


class NotStarted(Exception):
    """Not one byte of the job went out: its ``may_start`` said no."""


class LeaseLost(smtplib.SMTPException):
    """The caller said to stop a message part way (its lease was lost)."""


@dataclass(eq=False)
class _Awaiting:
    """A reply still to be read for something already written."""

    job: Job | None
    #: The recipients whose fate the content's reply decides; None for RSET.
    recipients: list[EnvelopeAddress] | None


class Session:
    """
    Mail transactions over one connection (RFC 5321, RFC 2920).

    Replies are read in order and every one is kept. After a 421 or a
    broken connection, ``lost`` is set and the connection must not be used
    again.
    """

    def __init__(self, connection: smtplib.SMTP, *, max_recipients: int) -> None:
        self.connection = connection
        self.max_recipients = max_recipients
        self.pipelining = connection.has_extn("pipelining")
        self.lost = False
        #: Why the connection was lost, if it was.
        self.error: BaseException | None = None
        #: Whether any job got a reply for a recipient.
        self.progress = False
        # Written, or to be written with the next commands, and unanswered.
        self._unsent: list[bytes] = []
        self._awaiting: list[_Awaiting] = []

    def run(self, jobs: list[Job]) -> None:
        """Send each unfinished job until done or the connection is lost."""
        try:
            for index, job in enumerate(jobs):
                if not self._may_start(job):
                    # The caller's sequence ends here: nothing after it
                    # starts either.
                    for later in jobs[index + 1 :]:
                        if not later.finished and not later.result.transactions:
                            later.stop(
                                NotStarted("Not started: an earlier job was not.")
                            )
                    break
                while not job.finished and not self.lost:
                    if job.result.transactions and not self._keep_going(job):
                        break
                    self._transaction(job)
                if self.lost:
                    break
            if not self.lost:
                self._flush()
        except OSError as exc:  # smtplib's errors, sockets, TLS
            self.lost = True
            error = exc
            if not isinstance(exc, smtplib.SMTPException):
                error = ConnectionLost(f"Connection lost: {exc}")
                error.__cause__ = exc
            # After a 421, the server's words say more than the hang-up.
            self.error = self.error or error
        if self.lost:
            self._fail_awaiting(
                self.error or ConnectionLost("The server closed the connection (421).")
            )

    def _may_start(self, job: Job) -> bool:
        if job.may_start is None or job.result.transactions or job.finished:
            return True
        try:
            if job.may_start():
                return True
        except Exception as exc:
            # As a no: the content still waiting (the job before's) goes.
            job.stop(exc)
            return False
        job.stop(NotStarted("Not started: the caller held it back."))
        return False

    def _keep_going(self, job: Job) -> bool:
        if job.keep_going is None:
            return True
        # The content of the job's last transaction goes, and its reply is
        # in, before the caller is asked: it may take its time (renewing
        # the outbox's lease is a database call), and a lease found lost
        # then stops what is not sent yet, not content held back. (Without
        # a caller to ask, the content goes with the next commands.)
        self._flush()
        if self.lost:
            return False  # a 421 in that reply: run() stops here
        if job.keep_going():
            return True
        job.stop(
            LeaseLost(
                "Stopped before the next transaction: another worker holds "
                "the message now."
            )
        )
        return False

    def _fail_awaiting(self, error: BaseException) -> None:
        """
        Stop each job whose content went out unanswered, with ``error``.

        Its outcome is unknown (the server may have accepted it: the
        duplicate window, one transaction wide). Jobs that never reached
        DATA may go over another connection.
        """
        self.error = error
        for item in self._awaiting:
            if item.job is not None and item.recipients is not None:
                item.job.stop(error)
        self._awaiting.clear()

    def _mail_options(self, job: Job) -> list[str]:
        connection = self.connection
        options: list[str] = []
        if job.envelope.smtputf8:
            if not connection.has_extn("smtputf8"):
                sender, recipients, _ = job.envelope
                culprit = next(a for a in [sender, *recipients] if a.smtputf8)
                raise SMTPUTF8Unsupported(culprit)
            options.append("SMTPUTF8")
            if connection.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
        if connection.does_esmtp and connection.has_extn("size"):
            options.append(f"SIZE={len(job.data)}")
        return options

    def _transaction(self, job: Job) -> None:
        try:
            options = self._mail_options(job)
        except SMTPUTF8Unsupported as exc:
            job.stop(exc)
            return
        chunk = job.todo()[: self.max_recipients]
        mail = f"MAIL FROM:<{_check_path(job.envelope.sender)}>"
        lines = ["".join([mail, *(f" {o}" for o in options)])]
        lines += [f"RCPT TO:<{_check_path(a)}>" for a in chunk]
        commands = ("\r\n".join(lines) + "\r\n").encode(
            "utf-8" if job.envelope.smtputf8 else "ascii"
        )
        job.result.transactions += 1
        if self.pipelining:
            self._send(*self._unsent, commands, b"DATA\r\n")
            self._unsent = []
            self._read_awaiting()
            mail_reply = self._reply(job, "MAIL")
            replies = [self._reply(job, address) for address in chunk]
            data_reply = self._reply(job, "DATA")
        else:
            self._send(commands.split(b"\r\n", 1)[0] + b"\r\n")
            mail_reply = self._reply(job, "MAIL")
            replies = []
            if accepted(mail_reply.code):
                for address, line in zip(
                    chunk, commands.split(b"\r\n")[1:-1], strict=True
                ):
                    self._send(line + b"\r\n")
                    replies.append(self._reply(job, address))
                    if self.lost:
                        break
            data_reply = Reply(0, b"")
            if any(accepted(r.code) for r in replies) and not self.lost:
                self._send(b"DATA\r\n")
                data_reply = self._reply(job, "DATA")
        self._settle(job, chunk, mail_reply, replies, data_reply)

    def _settle(
        self,
        job: Job,
        chunk: list[EnvelopeAddress],
        mail_reply: Reply,
        replies: list[Reply],
        data_reply: Reply,
    ) -> None:
        """Act on the replies to MAIL, RCPT and DATA of one transaction."""
        if data_reply.code == 354 and (
            not accepted(mail_reply.code) or not any(accepted(r.code) for r in replies)
        ):
            # A broken server began DATA with nobody to deliver to: send an
            # empty message to end it (it must refuse it).
            self._send(b".\r\n")
            self._reply()
        if not accepted(mail_reply.code):
            if self.lost:
                return  # 421: the job goes on over another connection
            self._reset()
            if job.started:
                # Refused in a later transaction: that is these recipients'
                # answer, and the next ones would get the same.
                for address in job.todo():
                    job.result.replies[address] = mail_reply
                self.progress = True
                return
            error = smtplib.SMTPSenderRefused(*mail_reply, job.envelope.sender)
            job.stop(error)
            return
        took = [a for a, r in zip(chunk, replies, strict=False) if accepted(r.code)]
        for address, reply in zip(chunk, replies, strict=False):
            if accepted(reply.code):
                continue
            if reply.code == TOO_MANY_RECIPIENTS and took:
                continue  # tried again in the next transaction
            if reply.code == 421:
                continue  # the job goes on over another connection
            job.result.replies[address] = reply
            job.result.refused_at_rcpt.add(address)
            self.progress = True
        if took and len(took) < len(chunk) and self._said_too_many(replies):
            # The server's limit is lower than ours: keep to it from now on.
            self.max_recipients = len(took)
        if self.lost:
            return
        if not took:
            self._reset()
            return
        if data_reply.code != 354:
            job.finish_transaction(took, data_reply)
            self.progress = True
            self._reset()
            return
        job._in_flight.update(took)
        if self.pipelining:
            # The final reply arrives after the next transaction's commands.
            self._unsent += job.content()
            self._awaiting.append(_Awaiting(job, took))
            return
        self._awaiting.append(_Awaiting(job, took))
        self._send(*job.content())
        self._read_awaiting()

    @staticmethod
    def _said_too_many(replies: list[Reply]) -> bool:
        return any(r.code == TOO_MANY_RECIPIENTS for r in replies)

    def _reset(self) -> None:
        """Abandon the transaction with RSET (its reply is read later)."""
        if self.lost:
            return
        if self.pipelining:
            self._unsent.append(b"RSET\r\n")
            self._awaiting.append(_Awaiting(None, None))
        else:
            self._send(b"RSET\r\n")
            self._reply()

    def _flush(self) -> None:
        if self._unsent or self._awaiting:
            self._send(*self._unsent)
            self._unsent = []
            self._read_awaiting()

    def _read_awaiting(self) -> None:
        # Each entry stays until its reply is in: if reading fails, what is
        # still listed has an unknown outcome (see run()).
        while self._awaiting:
            item = self._awaiting[0]
            reply = self._reply()
            del self._awaiting[0]
            if item.job is not None and item.recipients is not None:
                item.job.finish_transaction(item.recipients, reply)
                self.progress = True

    def _send(self, *parts: bytes) -> None:
        """Write ``parts`` in order: small ones together, large ones as they are."""
        pending: list[bytes] = []
        size = 0
        for part in parts:
            if len(part) >= _COALESCE:
                if pending:
                    self.connection.send(b"".join(pending))
                    pending, size = [], 0
                self.connection.send(part)  # not copied
                continue
            pending.append(part)
            size += len(part)
            if size >= _COALESCE:
                self.connection.send(b"".join(pending))
                pending, size = [], 0
        if size:
            self.connection.send(b"".join(pending))

    def _reply(self, job: Job | None = None, command: str = "") -> Reply:
        """
        Read one reply; ``job`` and ``command`` say what it answers (MAIL,
        DATA or a recipient's RCPT), if it belongs to a transaction.
        """
        code, text = self.connection.getreply()
        if code == 421:
            # The server is closing the connection. The job it answered
            # stops here, with smtplib's error for that command (it is
            # retried later, not at once: the server may be going down);
            # jobs not begun yet go over another connection.
            self.lost = True
            error: smtplib.SMTPException
            if job is None:
                error = ConnectionLost(f"The server closed the connection: {code}")
            elif command == "MAIL":
                error = smtplib.SMTPSenderRefused(code, text, job.envelope.sender)
            elif command == "DATA":
                error = smtplib.SMTPDataError(code, text)
            else:
                error = smtplib.SMTPRecipientsRefused({command: (code, text)})
            self.error = error
            if job is not None:
                job.stop(error)
        return Reply(code, text)


def quit_connection(connection: smtplib.SMTP) -> smtplib.SMTPException | None:
    """
    Say QUIT and close the connection, whatever happens.

    Returns the server's refusal of QUIT, if it refused; a connection that
    broke or hung up first (common with TLS) is just closed.
    """
    try:
        connection.quit()
    except smtplib.SMTPServerDisconnected:
        discard(connection)
    except smtplib.SMTPException as exc:
        discard(connection)
        return exc
    except OSError:  # sockets, TLS
        discard(connection)
    return None


def discard(connection: smtplib.SMTP) -> None:
    """Close the connection without a word (it is broken, or lost)."""
    try:
        connection.close()
    except OSError:
        pass


def run_jobs(
    jobs: list[Job],
    *,
    connect: Callable[[], smtplib.SMTP],
    connection: smtplib.SMTP | None,
    max_recipients: int,
    max_connections: int,
) -> smtplib.SMTP | None:
    """
    Send ``jobs``, each to every recipient it can reach; return the connection.

    ``connection`` is the caller's open connection (or None); the one
    returned is open and usable (None if it was lost). When the server
    offers PIPELINING and the batch is large, up to ``max_connections``
    connections share the jobs; the extra ones are closed at the end. A
    job the server never got to (its connection was lost first) goes over
    another connection; after a fresh connection makes no progress at all,
    the remaining jobs get its error.
    """
    if connection is not None:
        try:
            connection.ehlo_or_helo_if_needed()
        except OSError:
            # A kept connection that went stale: open a new one.
            discard(connection)
            connection = None
    count = 1
    if connection is not None and connection.has_extn("pipelining"):
        count = max(1, min(max_connections, len(jobs) // PER_CONNECTION))
    if count == 1:
        return _share(jobs, connect, connection, max_recipients, primary=True)
    shares = [jobs[i::count] for i in range(count)]
    threads = [
        threading.Thread(
            target=_share,
            args=(share, connect, None, max_recipients),
            kwargs={"primary": False},
            daemon=True,
        )
        for share in shares[1:]
    ]
    for thread in threads:
        thread.start()
    connection = _share(shares[0], connect, connection, max_recipients, primary=True)
    for thread in threads:
        thread.join()
    # An extra connection the server refused (e.g. "421 too many
    # connections") left its share untouched: the main one takes it.
    leftovers = [job for job in jobs if not job.finished]
    if leftovers:
        connection = _share(
            leftovers, connect, connection, max_recipients, primary=True
        )
    return connection


def _share(
    jobs: list[Job],
    connect: Callable[[], smtplib.SMTP],
    connection: smtplib.SMTP | None,
    max_recipients: int,
    *,
    primary: bool,
) -> smtplib.SMTP | None:
    """
    Send ``jobs`` over one connection at a time; return the one left open.

    When the server hangs up, the transaction in flight gets the error and
    the rest go over a new connection. An extra (not ``primary``) connection
    that can't be opened leaves its jobs for the main one, and is closed at
    the end.
    """
    fresh = connection is None
    try:
        while todo := [job for job in jobs if not job.finished]:
            if connection is None:
                try:
                    connection = connect()
                    connection.ehlo_or_helo_if_needed()
                except OSError as exc:
                    if primary:
                        for job in todo:
                            job.stop(exc)
                    return None
                fresh = True
            session = Session(connection, max_recipients=max_recipients)
            session.run(todo)
            if not session.lost:
                continue
            # The server hung up or said 421: never reuse this connection.
            discard(connection)
            connection = None
            if fresh and not session.progress:
                # No progress on a fresh connection: give up on the rest.
                # (A kept one may just have gone stale: try a new one.)
                error = session.error or ConnectionLost("Connection lost.")
                for job in todo:
                    if not job.finished:
                        job.stop(error)
    finally:
        if not primary and connection is not None:
            quit_connection(connection)
            connection = None
    return connection
