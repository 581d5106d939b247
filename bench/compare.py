"""
Drain speed against the apps users would pick instead, in one run.

For each app: a database of its own on the same PostgreSQL, 10,000 plain
messages queued through the app's own API, then drained into Postfix's
smtp-sink on loopback by 4 processes through the app's own command:

=================  ===========================================================
mailkit            ``mailkit_worker --once --batch-size 200 --processes 4``
mailkit-separate   4 x ``mailkit_worker --once --batch-size 200``
mailkit-rq         4 x ``rqworker --burst`` (django-tasks-rq, a task per
                   ``TASK_BATCH_SIZE`` messages committed together, enqueued
                   on commit; RQ forks a work horse per job)
mailkit-rq-simple  the same with ``--worker-class rq.worker.SimpleWorker``
mailkit-db         4 x django-tasks-db's ``db_worker --batch`` (tasks in the
                   same PostgreSQL database)
post_office        ``send_queued_mail --processes 4`` (documented defaults)
post_office-1000   the same with ``POST_OFFICE["BATCH_SIZE"] = 1000``
mailer             4 x django-mailer's ``send_mail`` (``MAILER_USE_FILE_LOCK =
                   False``, so they share the queue through row locks)
=================  ===========================================================

The time runs from starting the processes (so it includes Python starting
up, the same for every app) until the last one exits, every message sent.
CPU per message: the drain processes' user+system time (from wait4(), so it
includes the children they waited for: post_office's pool, RQ's work
horses), and that of the PostgreSQL client backends of that database (from
/proc/<pid>/stat, sampled every 0.05 s; a backend that appears during the
drain counts from zero).

Not part of CI. Run with ``bash bench/compare`` (it makes a bench-only
virtualenv with the other apps; they are never test dependencies).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
TICK = os.sysconf("SC_CLK_TCK")
BODY = "A plain message of about a kilobyte.\n" * 28
APPS = [
    "mailkit",
    "post_office",
    "post_office-1000",
    "mailer",
    "mailkit-rq",
    "mailkit-db",
]


# --- inside the app's project (python -m bench.compare queue|count) ----------


def queue(count: int) -> None:
    import django

    django.setup()
    app = os.environ["BENCH_APP"]
    messages = [
        (f"Bench message {i}", BODY, "bench@example.com", [f"u{i}@example.com"])
        for i in range(count)
    ]
    for start in range(0, count, 1000):
        chunk = messages[start : start + 1000]
        if app.startswith("mailkit"):
            from django_mailkit import EmailMessage, mailers

            if os.environ.get("BENCH_ONE_PER_COMMIT"):
                # As a web app sends: one message per transaction, so one
                # delivery task per message.
                for m in chunk:
                    mailers.default.send_messages([EmailMessage(*m)])
            else:
                mailers.default.send_messages([EmailMessage(*m) for m in chunk])
        elif app.startswith("post_office"):
            from post_office import mail

            mail.send_many(
                [
                    {
                        "sender": s,
                        "recipients": r,
                        "subject": subj,
                        "message": body,
                    }
                    for subj, body, s, r in chunk
                ]
            )
        else:
            from mailer import send_mass_mail

            send_mass_mail(chunk)


def count_sent() -> int:
    import django

    django.setup()
    app = os.environ["BENCH_APP"]
    if app.startswith("mailkit"):
        from django_mailkit.models import OutboxMessage

        return OutboxMessage.objects.filter(status="sent").count()
    if app.startswith("post_office"):
        from post_office.models import STATUS, Email

        return Email.objects.filter(status=STATUS.sent).count()
    from mailer.models import RESULT_SUCCESS, MessageLog

    return MessageLog.objects.filter(result=RESULT_SUCCESS).count()


# --- the driver ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int) -> None:
    for _ in range(100):
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port)).close()
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    port = free_port()
    sink = subprocess.Popen(
        [SMTP_SINK, "-u", "nobody", "-c", f"127.0.0.1:{port}", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        sink.terminate()
        sink.wait(5)


def postgres(dbname: str = "postgres"):
    import psycopg

    return psycopg.connect(
        host=os.environ.get("PGHOST", "localhost"),
        port=os.environ.get("PGPORT", "5432"),
        user=os.environ.get("PGUSER", "mailkit"),
        password=os.environ.get("PGPASSWORD", "mailkit"),
        dbname=dbname,
        autocommit=True,
    )


def cpu_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime


class BackendCPU:
    """CPU time of the PostgreSQL client backends serving one database."""

    def __init__(self, dbname: str) -> None:
        self.dbname = dbname
        self.first: dict[int, int] = {}
        self.started = False  # backends seen after this count from zero
        self.last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with postgres() as conn:
            while not self._stop.is_set():
                pids = [
                    row[0]
                    for row in conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                        "AND backend_type = 'client backend'",
                        [self.dbname],
                    )
                ]
                for pid in pids:
                    ticks = cpu_ticks(pid)
                    if ticks is not None:
                        self.first.setdefault(pid, ticks if not self.started else 0)
                        self.last[pid] = ticks
                self.started = True
                time.sleep(0.05)

    def __enter__(self) -> BackendCPU:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def seconds(self) -> float:
        # Backends that were there before the drain count from then.
        return sum(self.last[p] - self.first[p] for p in self.last) / TICK


def drain_commands(app: str, processes: int) -> list[list[str]]:
    django = [sys.executable, "-m", "django"]
    if app in ("mailkit", "mailkit-separate"):
        command = [*django, "mailkit_worker", "--once", "--batch-size", "200"]
        if app == "mailkit-separate":  # one command (and start-up) each
            return [command] * processes
        return [[*command, "--processes", str(processes)]]
    if app.startswith("mailkit-rq"):
        command = [*django, "rqworker", "--burst", "--job-class"]
        command += ["django_tasks_rq.Job", "default"]
        if app == "mailkit-rq-simple":  # no fork per job
            command += ["--worker-class", "rq.worker.SimpleWorker"]
        return [command] * processes
    if app == "mailkit-db":
        command = [*django, "db_worker", "--batch", "--interval", "0.1"]
        return [[*command, "--no-startup-delay", "-v0"]] * processes
    if app.startswith("post_office"):
        return [[*django, "send_queued_mail", "--processes", str(processes)]]
    return [[*django, "send_mail"]] * processes


def run_app(app: str, count: int, processes: int, port: int, redis: str) -> dict:
    # A database of this run's own: two runs at once must not share one.
    dbname = f"mailkit_cmp_{os.getpid()}_" + app.replace("-", "_")
    with postgres() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{dbname}"')
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "bench.compare_settings",
        "BENCH_APP": app,
        "BENCH_DB_NAME": dbname,
        "BENCH_SINK_PORT": str(port),
        "BENCH_REDIS_URL": redis,
    }
    if app.startswith("mailkit-rq"):
        import redis as redis_client

        redis_client.Redis.from_url(redis).flushdb()

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True
        )
        if done.returncode:
            raise SystemExit(f"{app}: {args} failed\n{done.stdout}\n{done.stderr}")
        return done.stdout

    run("-m", "django", "migrate", "-v0")
    started = time.perf_counter()
    run("-m", "bench.compare", "queue", str(count))
    queue_rate = count / (time.perf_counter() - started)
    with postgres(dbname) as conn:
        conn.execute("VACUUM ANALYZE")

    with BackendCPU(dbname) as pg:
        time.sleep(0.3)
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for command in drain_commands(app, processes)
        ]
        client = 0.0
        codes = []
        deadline = time.monotonic() + 1800
        for proc in procs:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.send_signal(signal.SIGKILL)
                time.sleep(0.05)
            proc.returncode = os.waitstatus_to_exitcode(status)
            codes.append(proc.returncode)
            client += usage.ru_utime + usage.ru_stime
        elapsed = time.perf_counter() - started
        time.sleep(0.2)
    sent = int(run("-m", "bench.compare", "count"))
    result = {
        "messages": count,
        "sent": sent,
        "exit_codes": codes,
        "seconds": round(elapsed, 2),
        "msg_per_s": round(sent / elapsed, 1),
        "queue_msg_per_s": round(queue_rate, 1),
        "client_cpu_ms_per_msg": round(1000 * client / max(sent, 1), 2),
        "postgres_cpu_ms_per_msg": round(1000 * pg.seconds() / max(sent, 1), 2),
    }
    result["total_cpu_ms_per_msg"] = round(
        result["client_cpu_ms_per_msg"] + result["postgres_cpu_ms_per_msg"], 2
    )
    with postgres() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "queue":
        queue(int(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "count":
        print(count_sent())
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument(
        "--one-per-commit",
        action="store_true",
        help="django_mailkit: queue each message in a transaction of its own "
        "(a delivery task each), not 1,000 per send_messages()",
    )
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--apps", default=",".join(APPS))
    parser.add_argument(
        "--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6399/9")
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the apps in turn this many times, then give each round's "
        "ratios of the first app to each other one, and their medians",
    )
    args = parser.parse_args()
    apps = args.apps.split(",")
    if len(set(apps)) < len(apps):
        parser.error("--apps: name each app once (--rounds N runs them N times)")
    if args.rounds < 1:
        parser.error(f"--rounds must be 1 or more; got {args.rounds}")
    if args.one_per_commit:
        os.environ["BENCH_ONE_PER_COMMIT"] = "1"
    results: dict[str, list[dict]] = {}
    with smtp_sink() as port:
        for _round in range(args.rounds):
            for app in apps:
                print(f"{app}: {args.messages} messages, {args.processes} processes")
                r = run_app(app, args.messages, args.processes, port, args.redis)
                results.setdefault(app, []).append(r)
                print(
                    f"  {r['msg_per_s']:.0f} msg/s ({r['sent']} sent in "
                    f"{r['seconds']} s, exit {r['exit_codes']}); CPU per message: "
                    f"client {r['client_cpu_ms_per_msg']} ms + PostgreSQL "
                    f"{r['postgres_cpu_ms_per_msg']} ms = "
                    f"{r['total_cpu_ms_per_msg']} ms"
                )
                if args.json:  # after every run: a failure later loses none
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps(results, indent=2))
    for line in ratios(apps, results):
        print(line)


def ratios(apps: list[str], results: dict[str, list[dict]]) -> list[str]:
    """
    Each round's drain and CPU ratios of the first app to each other one
    (runs of the same round ran one after the other), and their medians;
    "n/a" where the other app sent nothing.
    """
    first, *others = apps
    lines = []
    for other in others:
        rounds = list(zip(results[first], results[other], strict=True))
        drain = [_ratio(a["msg_per_s"], b["msg_per_s"]) for a, b in rounds]
        cpu = [
            _ratio(a["total_cpu_ms_per_msg"], b["total_cpu_ms_per_msg"])
            for a, b in rounds
        ]
        lines.append(
            f"{first} / {other}, per round: drain {_shown(drain)}; "
            f"CPU per message {_shown(cpu)}"
        )
        lines.append(
            f"  medians: drain {_shown([_median(drain)])}x, "
            f"CPU per message {_shown([_median(cpu)])}x"
        )
    return lines


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _shown(values: list[float | None]) -> str:
    return ", ".join("n/a" if v is None else f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
