"""
django_mailkit against django.core.mail, side by side in one process.

Run through ``bash bench/run`` (see bench/README.rst), or directly with an
interpreter that has Django and django_mailkit installed:

    python bench/bench.py [--quick] [--only build,message,loopback,...]

Every figure is a rate measured in this run, for both libraries on the same
machine at the same time; the ratios are what to read. Absolute numbers on
a shared machine mean little.
"""

from __future__ import annotations

import argparse
import contextlib
import email.policy
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

import django  # noqa: E402

django.setup()

from django.core import mail as django_mail  # noqa: E402

import django_mailkit as mailkit  # noqa: E402
from django_mailkit.rendering import render_bytes  # noqa: E402

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
RESULTS: dict[str, dict[str, float | str]] = {}


def say(line: str = "") -> None:
    print(line, flush=True)


def outbox_into_sink(port: int) -> dict[str, object]:
    """Settings: the outbox, delivered (by workers, no tasks) into the sink."""
    return {
        "MAILERS": {
            "default": {
                "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
                "OPTIONS": {"deliver_using": "smtp"},
            },
            "smtp": {"OPTIONS": {"host": "127.0.0.1", "port": port}},
        },
        "MAILKIT": {"USE_TASKS": False},
    }


def report(
    section: str, label: str, ours: float, theirs: float, unit: str = "msg/s"
) -> None:
    ratio = ours / theirs if theirs else float("inf")
    RESULTS.setdefault(section, {})[label] = {
        "django_mailkit": round(ours, 1),
        "django.core.mail": round(theirs, 1),
        "ratio": round(ratio, 2),
        "unit": unit,
    }
    say(
        f"  {label:<34} mailkit {ours:>10.1f}  django {theirs:>10.1f} {unit:<6} "
        f"ratio {ratio:6.2f}x"
    )


# Message profiles (the ones the issue names).

LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod "
    "tempor incididunt ut labore et dolore magna aliqua. "
)
GREEK = "Καλημέρα κόσμε, ünïcödé text, 日本語のテキスト. "


def plain(module):
    return module.EmailMessage(
        "Your order has shipped",
        (LOREM * 9)[:1000],
        "Shop <shop@example.com>",
        ["ann@example.com", "bob@example.com", "carol@example.com"],
    )


_FRESH = itertools.count()


def plain_fresh(module):
    """The plain message to three addresses never seen before (no cache helps)."""
    n = next(_FRESH)
    return module.EmailMessage(
        "Your order has shipped",
        (LOREM * 9)[:1000],
        "Shop <shop@example.com>",
        [f"ann{n}@example.com", f"Bob {n} <bob{n}@example.net>", f"carol{n}@x{n}.org"],
    )


def rich(module):
    text = (GREEK * 200)[:10000]
    msg = module.EmailMultiAlternatives(
        "Grüße aus Köln — Newsletter",
        text,
        "Zeitung <news@example.com>",
        ["leser@example.com"],
    )
    msg.attach_alternative(f"<html><body><p>{text}</p></body></html>", "text/html")
    return msg


ATTACHMENT_A = os.urandom(60_000)
ATTACHMENT_B = os.urandom(50_000)


def attachments(module):
    msg = module.EmailMessage(
        "Invoice 2026-114",
        "Please find the invoice attached.",
        "billing@example.com",
        ["ann@example.com"],
    )
    msg.attach("invoice.pdf", ATTACHMENT_A, "application/pdf")
    msg.attach("statement.zip", ATTACHMENT_B, "application/zip")
    return msg


def django_bytes(message) -> bytes:
    if django.VERSION >= (6, 0):
        return message.message(policy=email.policy.SMTP).as_bytes()
    return message.message().as_bytes(linesep="\r\n")


PROFILES = (
    ("plain 1 KB, 3 recipients", plain, 1),
    ("plain, 3 new recipients each", plain_fresh, 1),
    ("text+HTML 20 KB, non-ASCII", rich, 4),
    ("two attachments, 110 KB", attachments, 8),
)


def bench_build(quick: bool) -> None:
    say("Build: construct a message and render it to wire bytes (SMTP backend)")
    count = 300 if quick else 2000
    for name, factory, divisor in PROFILES:
        ours, theirs = paired_best_rates(
            lambda f=factory: render_bytes(f(mailkit), email.policy.SMTP),
            lambda f=factory: django_bytes(f(django_mail)),
            count // divisor // 2,
        )
        report("build", name, ours, theirs, unit="msg/cpu-s")


def bench_message(quick: bool) -> None:
    say("message(): build EmailMessage.message() and serialize it with as_bytes()")
    count = 300 if quick else 2000
    for name, factory, divisor in PROFILES:
        n = count // divisor
        # The route of every other backend (console, file, ESPs) and of
        # users' own code: the default policy, no fast renderer.
        ours, theirs = paired_best_rates(
            lambda f=factory: f(mailkit).message().as_bytes(),
            lambda f=factory: f(django_mail).message().as_bytes(),
            n // 2,
        )
        report("message", name, ours, theirs, unit="msg/cpu-s")


def paired_best_rates(
    ours: Callable[[], None], theirs: Callable[[], None], count: int, rounds: int = 9
) -> tuple[float, float]:
    """
    Best calls per CPU second of each, measured in alternating rounds.

    CPU time, not wall time, and alternating rounds: on a shared machine
    other processes' load then lands on neither side.
    """
    ours()
    theirs()
    best = [0.0, 0.0]
    for _ in range(rounds):
        for index, fn in enumerate((ours, theirs)):
            started = time.process_time()
            for _ in range(count):
                fn()
            elapsed = max(time.process_time() - started, 1e-9)
            best[index] = max(best[index], count / elapsed)
    return best[0], best[1]


def dkim_key(bits: int):
    """An RSA key made for this run, and its PEM text."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode("ascii")
    return key, pem


def dkim_option(pem: str) -> dict[str, str]:
    return {"domain": "example.com", "selector": "bench", "private_key": pem}


def bench_dkim(quick: bool) -> None:
    """
    DKIM's cost per message: build vs build and sign, for the three
    profiles, then where it goes, then over loopback SMTP.
    """
    import hashlib

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from dkim import crypto

    from django_mailkit.dkim import signer_from_option

    say("DKIM: build a message, and build and sign it (rsa-sha256, relaxed)")
    count = 40 if quick else 200
    pems = {}
    digest = hashlib.sha256(b"message")
    for bits in (2048, 1024):
        key, pem = dkim_key(bits)
        pems[bits] = pem
        signer = signer_from_option(dkim_option(pem), ValueError)
        assert signer is not None
        for name, factory, n in (
            ("plain 1 KB, 3 recipients", plain, count),
            ("text+HTML 20 KB, non-ASCII", rich, count // 2),
            ("two attachments, 110 KB", attachments, count // 4),
        ):
            # What the SMTP backend does: render, then sign the CRLF bytes.
            def build(f=factory) -> bytes:
                return render_bytes(f(mailkit), email.policy.SMTP)[0]

            def build_and_sign(f=factory, sign=signer.sign) -> bytes:
                return sign(build(f))

            built, signed = paired_best_rates(build, build_and_sign, n, rounds=5)
            report_dkim(f"{name}, RSA {bits}", built, signed)
        # The RSA private operation alone: OpenSSL's through cryptography
        # (what signs), and dkimpy's pure-Python one (what signed before).
        parsed = crypto.parse_pem_private_key(pem.encode())
        ours, openssl = paired_best_rates(
            lambda p=parsed: crypto.RSASSA_PKCS1_v1_5_sign(digest, p),
            lambda k=key: k.sign(b"message", padding.PKCS1v15(), hashes.SHA256()),
            count // 2,
            rounds=5,
        )
        RESULTS["dkim"][f"RSA {bits} private operation"] = {
            "dkimpy_ms": round(1000 / ours, 3),
            "openssl_ms": round(1000 / openssl, 3),
            "unit": "CPU ms per signature",
        }
        say(
            f"  {'RSA ' + str(bits) + ' private operation alone':<40} OpenSSL "
            f"{1000 / openssl:6.3f} ms  (dkimpy's pure Python: {1000 / ours:.3f} ms)"
        )
    sends = 300 if quick else 1000
    say(f"  Loopback: {sends} plain messages into smtp-sink, without and with DKIM")
    with smtp_sink() as port:
        without = cpu_delivery_rate(mailkit_backend(port), sends)
        signed = cpu_delivery_rate(
            mailkit_backend(port, dkim=dkim_option(pems[2048])), sends
        )
    RESULTS["dkim"][f"loopback {sends} messages, RSA 2048"] = {
        "without": round(without, 1),
        "with_dkim": round(signed, 1),
        "ratio": round(signed / without, 2),
        "unit": "msg/cpu-s",
    }
    say(
        f"  {'loopback, RSA 2048':<40} without {without:7.1f} msg/cpu-s  with "
        f"{signed:7.1f} msg/cpu-s  ratio {signed / without:5.2f}x"
    )


def cpu_delivery_rate(backend, count: int) -> float:
    """Messages sent per CPU second of this process (the sink is another)."""
    messages = [plain(mailkit) for _ in range(count)]
    started = time.process_time()
    sent = backend.send_messages(messages)
    elapsed = time.process_time() - started
    if sent != count:
        raise SystemExit(f"sent {sent} of {count}")
    return count / elapsed


def report_dkim(label: str, built: float, signed: float) -> None:
    build_ms, sign_ms = 1000 / built, 1000 / signed
    RESULTS.setdefault("dkim", {})[label] = {
        "build_ms": round(build_ms, 3),
        "build_and_sign_ms": round(sign_ms, 3),
        "overhead_ms": round(sign_ms - build_ms, 3),
        "ratio": round(sign_ms / build_ms, 2),
        "unit": "CPU ms per message",
    }
    say(
        f"  {label:<40} build {build_ms:7.3f} ms  build+sign {sign_ms:7.3f} ms  "
        f"overhead {sign_ms - build_ms:6.3f} ms  ratio {sign_ms / build_ms:5.2f}x"
    )


# SMTP sinks.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    """Postfix's smtp-sink on a free loopback port (advertises PIPELINING)."""
    if not os.path.exists(SMTP_SINK):
        raise SystemExit("smtp-sink not found: apt-get install postfix")
    port = free_port()
    args = [SMTP_SINK, "-u", "nobody", "-c", f"127.0.0.1:{port}", "256"]
    if os.geteuid() != 0:
        args.remove("-u")
        args.remove("nobody")
    sink = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield port
    finally:
        sink.terminate()
        sink.wait(5)


@contextlib.contextmanager
def delay_proxy(target: int, delay: float) -> Iterator[int]:
    port = free_port()
    proxy = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "delayproxy.py"),
            "--listen",
            f"127.0.0.1:{port}",
            "--target",
            f"127.0.0.1:{target}",
            "--delay",
            str(delay),
        ]
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        proxy.terminate()
        proxy.wait(5)


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), 0.2),
        ):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def mailkit_backend(port: int, **options):
    from django.test import override_settings

    config = {"host": "127.0.0.1", "port": port, "timeout": 30, **options}
    with override_settings(
        MAILERS={
            "default": {
                "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
                "OPTIONS": config,
            }
        }
    ):
        return mailkit.mailers.default


def django_backend(port: int):
    from django.core.mail.backends.smtp import EmailBackend

    if django.VERSION >= (6, 1):
        # Django 6.1's supported way to build one: through its registry.
        from django.test import override_settings

        with override_settings(
            MAILERS={
                "default": {
                    "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                    "OPTIONS": {"host": "127.0.0.1", "port": port, "timeout": 30},
                }
            }
        ):
            return django_mail.mailers["default"]
    return EmailBackend(host="127.0.0.1", port=port, timeout=30)


def delivery_rate(backend, module, count: int) -> float:
    messages = [plain(module) for _ in range(count)]
    started = time.perf_counter()
    sent = backend.send_messages(messages)
    elapsed = time.perf_counter() - started
    if sent != count:
        raise SystemExit(f"{type(backend).__module__}: sent {sent} of {count}")
    return count / elapsed


def bench_loopback(quick: bool) -> None:
    count = 500 if quick else 2000
    say(f"Loopback delivery: {count} messages into smtp-sink, one send_messages() call")
    with smtp_sink() as port:
        ours = delivery_rate(mailkit_backend(port), mailkit, count)
        theirs = delivery_rate(django_backend(port), django_mail, count)
    report("loopback", f"{count} messages", ours, theirs)


def bench_latency(quick: bool) -> None:
    delay = 0.025
    ours_count = 200 if quick else 500
    django_count = 30 if quick else 100
    say(
        f"Delivery over a {2 * delay * 1000:.0f} ms round trip (delay proxy): "
        f"mailkit {ours_count} messages, Django {django_count} (it is slow)"
    )
    with smtp_sink() as sink, delay_proxy(sink, delay) as port:
        theirs = delivery_rate(django_backend(port), django_mail, django_count)
        default = delivery_rate(mailkit_backend(port), mailkit, ours_count)
        four = delivery_rate(
            mailkit_backend(port, max_connections=4), mailkit, ours_count
        )
        sixteen = delivery_rate(
            mailkit_backend(port, max_connections=16), mailkit, ours_count
        )
    report("latency", "default options (1 connection, pipelined)", default, theirs)
    report("latency", "max_connections=4", four, theirs)
    report("latency", "max_connections=16", sixteen, theirs)


# The outbox.


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_backends() -> list[int]:
    """Server processes of the other connections to this database."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return [pid for (pid,) in cursor.fetchall()]


def bench_outbox(quick: bool, drain: int | None, batch: int = 200) -> None:
    from datetime import timedelta

    from django.core.management import call_command
    from django.db import connection
    from django.test import override_settings
    from django.utils import timezone

    from django_mailkit.models import OutboxMessage

    count = drain or (2000 if quick else 10000)
    if connection.vendor != "postgresql":
        say("Outbox drain: skipped (needs PostgreSQL: bash .ci/services start)")
        return
    say(
        f"Outbox drain: {count} queued messages, 4 worker processes, "
        "PostgreSQL, smtp-sink"
    )
    call_command("migrate", verbosity=0)
    OutboxMessage.objects.all().delete()
    with smtp_sink() as port:
        with override_settings(
            **outbox_into_sink(port),
        ):
            backend = mailkit.mailers.default
            started = time.perf_counter()
            for start in range(0, count, 1000):
                backend.send_messages(
                    [plain(mailkit) for _ in range(min(1000, count - start))]
                )
            queue_rate = count / (time.perf_counter() - started)
        # The workers start first, warm up, and only then do the messages
        # fall due: the rate is that of running workers, not of Python
        # starting up.
        OutboxMessage.objects.update(next_attempt_at=timezone.now() + timedelta(days=1))
        env = {**os.environ, "BENCH_SINK_PORT": str(port), "PYTHONPATH": str(ROOT)}
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "django",
                    "mailkit_worker",
                    "--batch-size",
                    str(batch),
                    "--interval",
                    "0.05",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
            )
            for _ in range(4)
        ]
        samples: dict[int, list[int]] = {w.pid: [] for w in workers}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for w in workers:
                    if w.poll() is None and (kb := rss_kb(w.pid)):
                        samples[w.pid].append(kb)
                time.sleep(0.2)

        sampler = threading.Thread(target=sample)
        sampler.start()
        # Warmed up: every worker connected and polling (slow on a busy box).
        deadline = time.monotonic() + 60
        while len(postgres_backends()) < len(workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        baseline = {w.pid: rss_kb(w.pid) for w in workers}  # warmed up, idle
        backends = postgres_backends()
        cpu_before = sum(cpu_seconds(w.pid) for w in workers)
        pg_before = sum(cpu_seconds(pid) for pid in backends)
        started = time.perf_counter()
        OutboxMessage.objects.update(next_attempt_at=timezone.now())
        while OutboxMessage.objects.exclude(status="sent").exists():
            if any(w.poll() is not None for w in workers):
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        client_cpu = sum(cpu_seconds(w.pid) for w in workers) - cpu_before
        server_cpu = sum(cpu_seconds(pid) for pid in backends) - pg_before
        done.set()
        sampler.join()
        for w in workers:
            w.send_signal(signal.SIGTERM)
        codes = [w.wait(30) for w in workers]
    sent = OutboxMessage.objects.filter(status="sent").count()
    if codes != [0] * 4 or sent != count:
        raise SystemExit(
            f"outbox drain failed: exit codes {codes}, sent {sent} of {count}"
        )
    rate = count / elapsed
    RESULTS.setdefault("outbox", {})["drain"] = {
        "messages": count,
        "msg_per_s": round(rate, 1),
        "queue_msg_per_s": round(queue_rate, 1),
        "batch_size": batch,
        "cpu_ms_per_msg_workers": round(client_cpu * 1000 / count, 2),
        "cpu_ms_per_msg_postgresql": round(server_cpu * 1000 / count, 2),
        "rss_kb_idle_peak_last": [
            [baseline[pid], max(s), s[-1]] if s else [] for pid, s in samples.items()
        ],
    }
    say(
        f"  queued {count} at {queue_rate:.0f} msg/s; drained at {rate:.0f} msg/s "
        f"(batch {batch}); CPU per message: workers "
        f"{client_cpu * 1000 / count:.2f} ms + PostgreSQL "
        f"{server_cpu * 1000 / count:.2f} ms"
    )
    for pid, series in samples.items():
        if series:
            say(
                f"  worker {pid}: RSS {baseline[pid] / 1024:.1f} MB when the drain "
                f"began, peak {max(series) / 1024:.1f} MB, last "
                f"{series[-1] / 1024:.1f} MB ({len(series)} samples)"
            )


def bench_memory(quick: bool) -> None:
    """Peak RSS of one worker delivering a batch of eight 30 MB messages."""
    from datetime import timedelta

    from django.core.management import call_command
    from django.db import connection
    from django.test import override_settings
    from django.utils import timezone

    from django_mailkit.models import OutboxMessage

    if connection.vendor != "postgresql":
        say("Outbox memory: skipped (needs PostgreSQL: bash .ci/services start)")
        return
    count, size = 8, 30 * 1024 * 1024
    say(f"Outbox memory: one worker, a batch of {count} messages of {size >> 20} MB")
    call_command("migrate", verbosity=0)
    OutboxMessage.objects.all().delete()
    with smtp_sink() as port:
        with override_settings(
            **outbox_into_sink(port),
        ):
            # Incompressible bytes, so nothing shrinks them on the way.
            payload = os.urandom(size * 3 // 4)  # base64 makes it ~30 MB
            for i in range(count):
                message = mailkit.EmailMessage(
                    f"big {i}", "See attached.", "a@example.com", ["b@example.com"]
                )
                message.attach("blob.bin", payload, "application/octet-stream")
                message.send()
            del payload, message
        stored = OutboxMessage.objects.order_by("pk").values_list("pk", flat=True)[:1]
        one = len(bytes(OutboxMessage.objects.get(pk=stored[0]).mime))
        OutboxMessage.objects.update(next_attempt_at=timezone.now() + timedelta(days=1))
        env = {**os.environ, "BENCH_SINK_PORT": str(port), "PYTHONPATH": str(ROOT)}
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "django",
                "mailkit_worker",
                "--batch-size",
                str(count),
                "--interval",
                "0.05",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        time.sleep(4)
        idle = rss_kb(worker.pid)  # warmed up: connected, imported, idle
        peak = idle
        OutboxMessage.objects.update(next_attempt_at=timezone.now())
        while OutboxMessage.objects.exclude(status="sent").exists():
            if worker.poll() is not None:
                break
            peak = max(peak, rss_kb(worker.pid))
            time.sleep(0.005)
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(30)
    sent = OutboxMessage.objects.filter(status="sent").count()
    OutboxMessage.objects.all().delete()
    if code != 0 or sent != count:
        raise SystemExit(f"outbox memory run failed: exit {code}, sent {sent}")
    above = (peak - idle) * 1024
    RESULTS.setdefault("outbox", {})["memory"] = {
        "messages": count,
        "message_bytes": one,
        "rss_idle_kb": idle,
        "rss_peak_kb": peak,
        "peak_above_idle_per_message": round(above / one, 2),
    }
    say(
        f"  RSS idle {idle / 1024:.1f} MB, peak {peak / 1024:.1f} MB: "
        f"{above / 1048576:.1f} MB above idle = {above / one:.2f}x one message "
        f"({one / 1048576:.1f} MB)"
    )


def bench_rate_limit(quick: bool, batch: int = 200) -> None:
    """
    The cost of a shared rate limit that never binds: the outbox drain with
    the transport's ``rate`` set above the unlimited drain rate, against the
    same drain without it, alternating, best of each.
    """
    from datetime import timedelta

    from django.core.management import call_command
    from django.db import connection
    from django.test import override_settings
    from django.utils import timezone

    from django_mailkit.limits import MailerLimit
    from django_mailkit.models import OutboxMessage

    if connection.vendor != "postgresql":
        say("Rate limit: skipped (needs PostgreSQL: bash .ci/services start)")
        return
    count = 2000 if quick else 5000
    call_command("migrate", verbosity=0)

    def drain(port: int, rate: str | None) -> float:
        OutboxMessage.objects.all().delete()
        MailerLimit.objects.all().delete()
        backend = mailkit.mailers.default
        for start in range(0, count, 1000):
            backend.send_messages(
                [plain(mailkit) for _ in range(min(1000, count - start))]
            )
        OutboxMessage.objects.update(next_attempt_at=timezone.now() + timedelta(days=1))
        env = {**os.environ, "BENCH_SINK_PORT": str(port), "PYTHONPATH": str(ROOT)}
        if rate is not None:
            env["BENCH_SINK_RATE"] = rate
        before = len(postgres_backends())
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "django", "mailkit_worker"]
                + ["--batch-size", str(batch), "--interval", "0.05"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
            )
            for _ in range(4)
        ]
        try:
            deadline = time.monotonic() + 60
            while len(postgres_backends()) < before + 4:
                if time.monotonic() > deadline:
                    raise SystemExit("rate limit bench: the workers did not start")
                time.sleep(0.2)
            time.sleep(1)
            started = time.perf_counter()
            OutboxMessage.objects.update(next_attempt_at=timezone.now())
            while OutboxMessage.objects.exclude(status="sent").exists():
                if any(w.poll() is not None for w in workers):
                    raise SystemExit("rate limit bench: a worker exited")
                time.sleep(0.02)
            return count / (time.perf_counter() - started)
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                w.wait(30)

    with (
        smtp_sink() as port,
        override_settings(
            **outbox_into_sink(port),
        ),
    ):
        unlimited = [drain(port, None)]
        # Twice the unlimited rate: the bucket never runs dry, so what is
        # measured is the cost of taking tokens. Alternated, three of each:
        # the machine's load moves between runs.
        rate = f"{int(unlimited[0] * 2)}/s"
        limited = [drain(port, rate)]
        for _pair in range(2):
            unlimited.append(drain(port, None))
            limited.append(drain(port, rate))
    best_unlimited, best_limited = max(unlimited), max(limited)
    RESULTS.setdefault("outbox", {})["rate_limit"] = {
        "messages": count,
        "rate": rate,
        "unlimited_msg_per_s": [round(r, 1) for r in unlimited],
        "limited_msg_per_s": [round(r, 1) for r in limited],
        "ratio": round(best_limited / best_unlimited, 3),
    }
    say(
        f"Outbox drain with a rate limit above it ({rate}), {count} messages, "
        "4 workers, best of 3:"
    )
    say(
        f"  unlimited {best_unlimited:.0f} msg/s, limited {best_limited:.0f} msg/s: "
        f"{best_limited / best_unlimited:.2f}x "
        f"(runs: {', '.join(f'{r:.0f}' for r in unlimited)} unlimited; "
        f"{', '.join(f'{r:.0f}' for r in limited)} limited)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages")
    parser.add_argument(
        "--only",
        default="build,message,dkim,loopback,latency,outbox,memory,ratelimit",
    )
    parser.add_argument("--drain", type=int, help="messages for the outbox drain")
    parser.add_argument(
        "--drain-batch", type=int, default=200, help="--batch-size of the workers"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    say(
        f"django_mailkit bench: Python {platform.python_version()}, "
        f"Django {django.__version__}, {os.cpu_count()} CPUs"
    )
    sections = args.only.split(",")
    if "build" in sections:
        bench_build(args.quick)
    if "message" in sections:
        bench_message(args.quick)
    if "dkim" in sections:
        bench_dkim(args.quick)
    if "loopback" in sections:
        bench_loopback(args.quick)
    if "latency" in sections:
        bench_latency(args.quick)
    if "outbox" in sections:
        bench_outbox(args.quick, args.drain, args.drain_batch)
    if "memory" in sections:
        bench_memory(args.quick)
    if "ratelimit" in sections:
        bench_rate_limit(args.quick, args.drain_batch)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "python": platform.python_version(),
            "django": django.__version__,
            **RESULTS,
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
