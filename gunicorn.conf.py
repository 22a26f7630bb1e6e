"""gunicorn settings; every value can be overridden from the environment."""

import ctypes
import multiprocessing
import os

bind = os.environ.get(
    "BIND", f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
)
# One process per core, each with threads: a callback spends most of its time waiting
# on the database, which threads overlap (and the batch writers, SQLite's group commit
# and PostgreSQL's pipeline, turn into fewer, larger commits), and gthread keeps client
# connections alive. 16 threads: +10-28% callbacks/s over 8 on PostgreSQL. Measured in
# docs/performance.md "Ingestion"; the fault tests (worker/server SIGKILL, database
# refused or black-holed) pass with it.
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
# A request that takes longer than this is killed; ingest needs milliseconds.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
# Recycle workers now and then so a slow leak can never grow without bound.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "0"))
# An empty GUNICORN_ACCESSLOG turns the access log off.
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# The request line without its query string, and the request id (nothing secret is
# ever in a URL here, but a query string is the usual place for one to leak).
access_log_format = os.environ.get(
    "GUNICORN_ACCESS_LOG_FORMAT",
    '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s',
)

# Metrics from every worker add up (prometheus-client multi-process mode): each
# worker writes its counters into this directory and /metrics merges them. It must be
# set before prometheus_client is first imported, so it is set here, in the master.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="flowhooks-metrics-")
    _metrics_dir_is_ours = True
else:
    _metrics_dir_is_ours = False


def on_starting(server):
    """Refuse to start on unusable settings (one line each, exit 1, before any worker
    boots); start every run with empty metric files (counters restart at zero)."""
    import glob

    from webhook.core.envvars import exit_on_config_error
    from webhook.core.settings import Settings

    with exit_on_config_error():
        Settings.from_env()

    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)


def child_exit(server, worker):
    """Forget a dead worker's live gauges; its counters stay in the totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _metrics_dir_is_ours:
        import shutil

        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def post_fork(server, worker):
    """Cap glibc's malloc arenas (one per thread by default): about 5 MB less per worker."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_arena_max = -8
    libc.mallopt(m_arena_max, int(os.environ.get("MALLOC_ARENA_MAX", "2")))
