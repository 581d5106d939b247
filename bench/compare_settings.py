"""
Settings for bench/compare.py: one project per app, BENCH_APP selects it.

mailkit (mailkit_worker), mailkit-rq (RQ workers through django-tasks-rq),
mailkit-db (django-tasks-db's db_worker), post_office and post_office-1000
(send_queued_mail, default and BATCH_SIZE=1000), mailer (django-mailer's
send_mail). Each app has its own PostgreSQL database (BENCH_DB_NAME); mail
goes to smtp-sink on 127.0.0.1:BENCH_SINK_PORT.
"""

import os

APP = os.environ.get("BENCH_APP", "mailkit")
SINK_PORT = int(os.environ.get("BENCH_SINK_PORT", "25"))

SECRET_KEY = "django_mailkit-compare"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("PGHOST", "localhost"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "USER": os.environ.get("PGUSER", "mailkit"),
        "PASSWORD": os.environ.get("PGPASSWORD", "mailkit"),
        "NAME": os.environ["BENCH_DB_NAME"],
    }
}
DEFAULT_FROM_EMAIL = "bench@example.com"
EMAIL_HOST = "127.0.0.1"
EMAIL_PORT = SINK_PORT
EMAIL_TIMEOUT = 30
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"handlers": [], "level": "ERROR"},
}

if APP.startswith("mailkit"):
    INSTALLED_APPS += ["django_tasks", "django_mailkit"]
    EMAIL_BACKEND = "django_mailkit.backends.mailer.EmailBackend"
    MAILERS = {
        "default": {
            "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
            "OPTIONS": {"deliver_using": "smtp"},
        },
        "smtp": {"OPTIONS": {"host": "127.0.0.1", "port": SINK_PORT, "timeout": 30}},
    }
    # The defaults: tasks of MAILKIT["TASK_BATCH_SIZE"] (20) messages.
    MAILKIT = {"USE_TASKS": APP != "mailkit"}
    if APP.startswith("mailkit-rq"):
        INSTALLED_APPS += ["django_rq", "django_tasks_rq"]
        TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend"}}
        RQ_QUEUES = {"default": {"URL": os.environ["BENCH_REDIS_URL"]}}
    elif APP == "mailkit-db":
        INSTALLED_APPS += ["django_tasks_db"]
        TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    if APP != "mailkit":
        # What docs/topics/outbox.rst tells task workers to use: db_worker
        # closes the database connection after every task unless it may
        # live on (RQ's SimpleWorker keeps it anyway; a forked work horse
        # can't). Django's own advice for long-running processes.
        DATABASES["default"]["CONN_MAX_AGE"] = 600
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
elif APP.startswith("post_office"):
    INSTALLED_APPS += ["post_office"]
    # post_office renders subjects and bodies as templates.
    TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates"}]
    EMAIL_BACKEND = "post_office.EmailBackend"
    POST_OFFICE = {
        "BACKENDS": {"default": "django.core.mail.backends.smtp.EmailBackend"},
        # Documented default 100; the README's tuning advice raises it.
        "BATCH_SIZE": 1000 if APP == "post_office-1000" else 100,
        "LOG_LEVEL": 0,
    }
elif APP == "mailer":
    INSTALLED_APPS += ["mailer"]
    EMAIL_BACKEND = "mailer.backend.DbBackend"
    MAILER_EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    # Several send_mail processes at once: row locks instead of the file lock.
    MAILER_USE_FILE_LOCK = False
else:
    raise ValueError(f"unknown BENCH_APP {APP!r}")
