"""
Delivery through real queueing task backends, with their own worker processes.

django-tasks-db (its ``db_worker``) and django-tasks-rq (RQ workers on a real
Redis server) run a small project (tests/task_settings.py) in separate
processes: the application commits and rolls back messages
(tests/task_producer.py), the backend's workers deliver them to an SMTP sink
in this process, and each committed message must arrive exactly once,
counted by Message-ID; rolled-back ones never. A message whose task was lost
is still delivered, by ``mailkit_worker``. Tasks queued one per message are
delivered by a few task runs, a batch each (MAILKIT["TASK_BATCH_SIZE"]).

The SQLite tests are small and run on every Django version (the Tasks
framework differs: django.tasks on 6.0+, the backport on 5.2). The
multi-worker PostgreSQL tests are marked ``concurrency`` (PostgreSQL pass)
and run on the newest Django only. RQ needs the Redis server that
.ci/services starts (MAILKIT_REDIS_URL, default redis://127.0.0.1:6399).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import django
import pytest

from tests.conftest import ON_POSTGRES
from tests.smtpserver import SMTPTestServer

ROOT = Path(__file__).resolve().parent.parent
MESSAGE_ID = re.compile(rb"^Message-ID: (<[^>]+>)", re.MULTILINE | re.IGNORECASE)
REDIS_URL = os.environ.get("MAILKIT_REDIS_URL", "redis://127.0.0.1:6399")
# The multi-process tests need only one Django version: the newest.
NEWEST_DJANGO_ONLY = pytest.mark.skipif(
    django.VERSION[:2] != (6, 1),
    reason="multi-process task backend tests run on the newest Django only",
)


def _installed(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


needs_tasks_db = pytest.mark.skipif(
    not _installed("django_tasks_db"), reason="django-tasks-db is not installed"
)
needs_tasks_rq = pytest.mark.skipif(
    not _installed("django_tasks_rq"), reason="django-tasks-rq is not installed"
)


@pytest.fixture
def sink():
    server = SMTPTestServer(pipelining=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url():
    """A Redis database of its own for this test, emptied before and after."""
    import redis

    url = f"{REDIS_URL.rstrip('/')}/{os.getpid() % 15 + 1}"
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError:
        message = f"No Redis server answers at {REDIS_URL} (.ci/services starts one)."
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    yield url
    client.flushdb()
    client.close()


class Project:
    """The small project of tests/task_settings.py, run as processes."""

    def __init__(self, tmp_path, sink, kind, *, postgres, redis_url=None):
        self.tmp_path = tmp_path
        self.sink = sink
        self.workers = []
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "tests.task_settings",
            "MAILKIT_TASKS": kind,
            "MAILKIT_SINK_PORT": str(sink.port),
        }
        if redis_url:
            self.env["MAILKIT_REDIS_URL"] = redis_url
        if postgres:
            base = os.environ.get("MAILKIT_TEST_DB_NAME", "test_mailkit")
            self.db_name = f"{base}_tasks"
            self.env["MAILKIT_DB"] = "postgresql"
            self._postgres("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            self._postgres("CREATE DATABASE {}")
        else:
            self.db_name = str(tmp_path / "db.sqlite3")
            self.env.pop("MAILKIT_DB", None)
        self.postgres = postgres
        self.env["MAILKIT_DB_NAME"] = self.db_name
        self.run("-m", "django", "migrate", "-v0")

    def _postgres(self, statement):
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            host=os.environ.get("PGHOST", "localhost"),
            port=os.environ.get("PGPORT", "5432"),
            user=os.environ.get("PGUSER", "mailkit"),
            password=os.environ.get("PGPASSWORD", "mailkit"),
            dbname="postgres",
            autocommit=True,
            connect_timeout=5,
        ) as conn:
            conn.execute(sql.SQL(statement).format(sql.Identifier(self.db_name)))

    def run(self, *args, timeout=180):
        done = subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def producer(self, *args):
        return json.loads(self.run("-m", "tests.task_producer", *args))

    def start(self, *command):
        """Start a worker process; its output goes to a log file."""
        log = self.tmp_path / f"worker{len(self.workers)}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "django", *command],
            cwd=ROOT,
            env=self.env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        process.log = log
        self.workers.append(process)
        return process

    def logs(self):
        return "\n".join(
            f"--- {p.args[3:]} (exit {p.returncode})\n"
            + p.log.read_text(errors="replace")[-3000:]
            for p in self.workers
        )

    def stop(self):
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.workers:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def close(self):
        self.stop()
        if self.postgres:
            self._postgres("DROP DATABASE IF EXISTS {} WITH (FORCE)")

    def delivered(self):
        counts = Counter()
        for delivery in list(self.sink.deliveries):
            match = MESSAGE_ID.search(delivery.data)
            assert match, delivery.data[:200]
            counts[match.group(1).decode()] += 1
        return counts

    def wait_for_deliveries(self, count, timeout):
        deadline = time.monotonic() + timeout
        while len(self.sink.deliveries) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(self.sink.deliveries)} of {count} messages delivered "
                    f"after {timeout}s\n{self.logs()}"
                )
            dead = [p for p in self.workers if p.poll() is not None]
            assert not dead, f"a worker exited early\n{self.logs()}"
            time.sleep(0.1)

    def assert_exactly_once(self, sent):
        counts = self.delivered()
        assert set(sent["committed"]) - set(counts) == set(), "not delivered"
        assert set(counts) & set(sent["rolled_back"]) == set(), "rolled back, sent"
        assert [mid for mid, n in counts.items() if n > 1] == [], "sent twice"
        assert set(counts) == set(sent["committed"])


@pytest.fixture
def project_factory(tmp_path, sink):
    projects = []

    def make(kind, *, postgres=False, redis_url=None):
        project = Project(tmp_path, sink, kind, postgres=postgres, redis_url=redis_url)
        projects.append(project)
        return project

    yield make
    for project in projects:
        project.close()


DB_WORKER = ("db_worker", "--interval", "0.1", "--no-startup-delay", "-v0")
RQ_WORKER = ("rqworker", "--job-class", "django_tasks_rq.Job", "default")


def drain_then_lose_tasks(project, worker, *, workers, committed, rolled_back):
    """
    Workers deliver every committed message once; then, with the workers
    gone, tasks are enqueued and lost, and mailkit_worker still delivers.
    """
    for _ in range(workers):
        project.start(*worker)
    sent = project.producer("send", str(committed), str(rolled_back))
    project.wait_for_deliveries(committed, timeout=180)
    time.sleep(0.5)  # anything sent twice would arrive about now
    project.stop()
    project.assert_exactly_once(sent)

    more = project.producer("send", "12", "3")
    project.producer("lose-tasks")
    assert project.producer("statuses") == {"sent": committed, "queued": 12}
    project.run("-m", "django", "mailkit_worker", "--once")
    project.assert_exactly_once(
        {key: sent[key] + more[key] for key in ("committed", "rolled_back")}
    )
    assert project.producer("statuses") == {"sent": committed + 12}


def batched_by_task_workers(project, worker, *, workers, committed, rolled_back):
    """
    Messages committed one at a time while no worker runs: a task each.
    Then the workers start: every sending task run takes a batch of 20
    (its own message, then the oldest due), so three runs deliver 60
    messages, each exactly once (a run more for each worker that raced
    another to the last ones); the other tasks find nothing to do.
    """
    sent = project.producer("send", str(committed), str(rolled_back))
    assert project.producer("statuses") == {"queued": committed}
    for _ in range(workers):
        project.start(*worker)
    project.wait_for_deliveries(committed, timeout=180)
    time.sleep(0.5)  # anything sent twice would arrive about now
    project.stop()
    project.assert_exactly_once(sent)
    runs = project.producer("runs")
    assert runs["attempts"] == committed, runs
    batches = -(-committed // 20)
    assert batches <= runs["runs"] <= batches + workers, runs
    assert project.producer("statuses") == {"sent": committed}


@pytest.mark.skipif(ON_POSTGRES, reason="the SQLite pass runs these")
class TestOnSQLite:
    """Two workers share a SQLite file (every Django version)."""

    @needs_tasks_db
    def test_db_worker(self, project_factory):
        drain_then_lose_tasks(
            project_factory("db"), DB_WORKER, workers=2, committed=24, rolled_back=8
        )

    @needs_tasks_rq
    def test_rq_worker(self, project_factory, redis_url):
        drain_then_lose_tasks(
            project_factory("rq", redis_url=redis_url),
            RQ_WORKER,
            workers=2,
            committed=24,
            rolled_back=8,
        )

    @needs_tasks_rq
    def test_rq_workers_deliver_in_batches(self, project_factory, redis_url):
        batched_by_task_workers(
            project_factory("rq", redis_url=redis_url),
            RQ_WORKER,
            workers=2,
            committed=60,
            rolled_back=10,
        )


@pytest.mark.concurrency
@NEWEST_DJANGO_ONLY
class TestOnPostgreSQL:
    """Four workers share the queue on PostgreSQL (newest Django only)."""

    @needs_tasks_db
    def test_db_worker(self, project_factory):
        drain_then_lose_tasks(
            project_factory("db", postgres=True),
            DB_WORKER,
            workers=4,
            committed=200,
            rolled_back=50,
        )

    @needs_tasks_rq
    def test_rq_worker(self, project_factory, redis_url):
        drain_then_lose_tasks(
            project_factory("rq", postgres=True, redis_url=redis_url),
            RQ_WORKER,
            workers=4,
            committed=120,
            rolled_back=40,
        )
