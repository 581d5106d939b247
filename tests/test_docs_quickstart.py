"""
docs/quickstart.rst runs as written.

The page's ``.. code-block::`` blocks are run in order, in a new project in a
temporary directory, against a real SMTP server (aiosmtpd with STARTTLS and
AUTH, trusted through ``SSL_CERT_FILE`` as a real CA would be):

- ``console`` blocks: each ``$ `` line is run (``django-admin``, ``cd``,
  ``python manage.py ...``); the lines after it are output that must appear;
  ``mailkit_worker`` (which runs until stopped) runs in the background until
  the outbox is empty, then gets SIGTERM, as the page says;
- ``python`` blocks whose first line is ``# <path>settings.py`` are appended
  to that file of the project, as a reader adds them to theirs;
- other ``python`` blocks are run with ``manage.py shell -c``.

The SMTP_* variables are set from the first sending block on, as the page
tells the reader to; the commands before run without them. Every command
runs with deprecation warnings as errors. When the outbox is the default
mailer, the server answers its first attempt at each message with a 451, so
that what the worker block delivers is what the page says it delivers.

Anything on the page the test can't run fails it: a new block kind or
command must be taught here rather than skipped.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.smtpserver import PASSWORD, USERNAME, SMTPTestServer, TestPKI

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "quickstart.rst"
TIMEOUT = 60
#: Added after the page's settings: the test's, not the reader's. Retries
#: come within a second instead of a minute; the page's own MAILKIT is kept.
HARNESS = """
# tests/test_docs_quickstart.py: retries come quickly in the test.
MAILKIT = {**globals().get("MAILKIT", {}), "BACKOFF_BASE": 0.2, "BACKOFF_CAP": 0.5}
"""


@dataclass
class Block:
    language: str
    code: str
    line: int

    def where(self) -> str:
        return f"docs/quickstart.rst, line {self.line}"


def code_blocks(text: str) -> list[Block]:
    """The page's ``.. code-block::`` blocks, in order; bare ``::`` refused."""
    lines = text.splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        line = lines[index]
        found = re.match(r"^(\s*)\.\. code-block::\s*(\S+)\s*$", line)
        if found is None:
            assert not re.search(r"(^|[^:]):: *$", line) or line.lstrip().startswith(
                ".."
            ), (
                f"docs/quickstart.rst, line {index + 1}: a '::' literal block. Use "
                "'.. code-block:: python' or 'console' so that the test runs it."
            )
            index += 1
            continue
        indent = len(found.group(1))
        index += 1
        while index < len(lines) and re.match(r"^\s+:\w+:", lines[index]):
            index += 1  # the directive's options
        body: list[str] = []
        start = index + 1
        while index < len(lines) and (
            not lines[index].strip()
            or len(lines[index]) - len(lines[index].lstrip()) > indent
        ):
            body.append(lines[index])
            index += 1
        code = "\n".join(body).strip("\n")
        width = min(len(x) - len(x.lstrip()) for x in code.splitlines() if x.strip())
        code = "\n".join(x[width:] for x in code.splitlines()) + "\n"
        blocks.append(Block(found.group(2), code, start))
    return blocks


def sends_in(code: str) -> int:
    """How many messages a sending block sends."""
    return len(re.findall(r"\bsend_mail\(|\.send\(", code))


class Project:
    """The reader's shell: a working directory, an environment, the server."""

    def __init__(self, tmp_path: Path, server: SMTPTestServer, pki: TestPKI):
        self.cwd = tmp_path
        self.server = server
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("DJANGO_", "MAILKIT_", "SMTP_"))
        }
        # This work tree's django_mailkit, whatever the interpreter has.
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
        )
        env["PYTHONWARNINGS"] = (
            "error::DeprecationWarning,error::PendingDeprecationWarning"
        )
        env["SSL_CERT_FILE"] = str(pki.ca)  # the server's CA, as a real one would be
        self.env = env
        self.smtp_env = {
            "SMTP_HOST": server.host,
            "SMTP_PORT": str(server.port),
            "SMTP_USE_TLS": "1",
            "SMTP_USER": USERNAME,
            "SMTP_PASSWORD": PASSWORD,
        }
        self.settings_file: Path | None = None
        self.generated = ""
        self.page_settings: list[str] = []

    def command(self, argv: list[str], block: Block) -> list[str]:
        """Translate a console line into what to run with this interpreter."""
        if argv[:1] == ["django-admin"]:
            return [sys.executable, "-m", "django", *argv[1:]]
        if argv[:2] == ["python", "manage.py"]:
            return [sys.executable, *argv[1:]]
        raise AssertionError(
            f"{block.where()}: tests/test_docs_quickstart.py doesn't know how to "
            f"run {shlex.join(argv)!r}; teach Project.command()."
        )

    def run(self, argv: list[str], block: Block) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            argv,
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0 and "Traceback" not in result.stderr, (
            f"{block.where()}: {shlex.join(argv[1:])} failed "
            f"(exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
        # A warning from the system checks (migrate and runserver print them
        # and go on) is a failure of the page too: its settings must be clean.
        assert "System check identified some issues" not in result.stderr, (
            f"{block.where()}: {shlex.join(argv[1:])}:\n{result.stderr}"
        )
        return result

    @property
    def outbox_is_default(self) -> bool:
        """Whether the settings so far make the outbox the default mailer."""
        namespace: dict[str, object] = {}
        exec("\n".join(self.page_settings), namespace)
        mailers = namespace.get("MAILERS")
        assert isinstance(mailers, dict)
        return str(mailers["default"].get("BACKEND", "")).endswith(
            ".outbox.EmailBackend"
        )

    def unsent_outbox_messages(self) -> int:
        with sqlite3.connect(self.cwd / "db.sqlite3") as connection:
            return connection.execute(
                "SELECT count(*) FROM django_mailkit_outboxmessage "
                "WHERE status IN ('queued', 'sending')"
            ).fetchone()[0]

    # The three kinds of block.

    def console(self, block: Block) -> None:
        lines = block.code.splitlines()
        for number, line in enumerate(lines):
            if not line.startswith("$ "):
                continue
            argv = shlex.split(line[2:])
            output = []
            for following in lines[number + 1 :]:
                if following.startswith("$ "):
                    break
                output.append(following)
            if argv[0] == "cd":
                self.cwd = self.cwd / argv[1]
                continue
            command = self.command(argv, block)
            if argv[2:3] == ["mailkit_worker"] and "--once" not in argv:
                self.worker(command, block)
                continue
            result = self.run(command, block)
            for expected in filter(None, (x.strip() for x in output)):
                assert expected in result.stdout + result.stderr, (
                    f"{block.where()}: {line[2:]!r} didn't print {expected!r}:\n"
                    f"{result.stdout}{result.stderr}"
                )

    def worker(self, command: list[str], block: Block) -> None:
        """Run the worker until the outbox is empty, then stop it, as a reader."""
        waiting = self.unsent_outbox_messages()
        assert waiting, (
            f"{block.where()}: nothing is waiting in the outbox for the worker "
            "(the page's outbox example didn't queue a message)"
        )
        delivered = len(self.server.deliveries)
        process = subprocess.Popen(
            command,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + TIMEOUT
            while self.unsent_outbox_messages() and process.poll() is None:
                assert time.monotonic() < deadline, "the worker delivered nothing"
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0 and "Traceback" not in stderr, (
            f"{block.where()}: mailkit_worker exited {process.returncode}:\n"
            f"{stdout}\n{stderr}"
        )
        assert len(self.server.deliveries) == delivered + waiting

    def settings(self, block: Block, path: str) -> None:
        """Add the block to the project's settings, as the reader does."""
        target = self.cwd / path
        assert target.is_file(), f"{block.where()}: the project has no {path}"
        if self.settings_file is None:
            self.settings_file, self.generated = target, target.read_text()
        assert target == self.settings_file, f"{block.where()}: another {path}?"
        self.page_settings.append(
            f"\n# docs/quickstart.rst, line {block.line}\n{block.code}"
        )
        target.write_text(self.generated + "".join(self.page_settings) + HARNESS)

    def shell(self, block: Block) -> None:
        self.env.update(self.smtp_env)  # "Set the variables for your server"
        count = sends_in(block.code)
        assert count, f"{block.where()}: a Python block that sends nothing"
        before = len(self.server.deliveries)
        queued = self.outbox_is_default
        if queued:
            # The first attempt at each message is refused for now: the
            # worker block has to deliver them.
            self.server.reply("MAIL", "451 4.3.0 Try again later", times=count)
        self.run([sys.executable, "manage.py", "shell", "-c", block.code], block)
        if queued:
            assert len(self.server.deliveries) == before
            assert self.unsent_outbox_messages() == count
        else:
            assert len(self.server.deliveries) == before + count, (
                f"{block.where()}: the server got "
                f"{len(self.server.deliveries) - before} of {count} messages"
            )


def test_quickstart_runs_as_written(tmp_path: Path, pki: TestPKI) -> None:
    blocks = code_blocks(PAGE.read_text())
    assert len(blocks) >= 6, "the quick start lost its examples"
    server = SMTPTestServer(pki=pki, tls="starttls", require_starttls=True, auth=True)
    server.start()
    try:
        project = Project(tmp_path, server, pki)
        for block in blocks:
            if block.language == "console":
                project.console(block)
            elif block.language == "python":
                target = re.match(
                    r"#\s*(\S*settings\.py)\s*$", block.code.split("\n")[0]
                )
                if target:
                    project.settings(block, target.group(1))
                else:
                    project.shell(block)
            else:
                raise AssertionError(
                    f"{block.where()}: a {block.language!r} block, which "
                    "tests/test_docs_quickstart.py doesn't run."
                )
    finally:
        server.stop()

    assert project.outbox_is_default, "the quick start no longer shows the outbox"
    assert project.unsent_outbox_messages() == 0
    deliveries = server.deliveries
    expected = sum(sends_in(b.code) for b in blocks if b.language == "python")
    assert len(deliveries) == expected
    for delivery in deliveries:
        # Every message went over STARTTLS, logged in, from DEFAULT_FROM_EMAIL.
        assert delivery.session.starttls and delivery.session.auth_login == USERNAME
        assert delivery.mail_from == "noreply@example.com"
    # Each attachment the page adds arrives, with the content it gives.
    page = PAGE.read_text()
    for name, content in re.findall(r'\.attach\(\s*"([^"]+)",\s*"([^"]*)"', page):
        parts = [
            part
            for delivery in deliveries
            for part in delivery.message.iter_attachments()
            if part.get_filename() == name
        ]
        assert len(parts) == 1, f"the attachment {name!r} didn't arrive"
        text = parts[0].get_content()
        assert text.replace("\r\n", "\n") == content.encode().decode("unicode_escape")
