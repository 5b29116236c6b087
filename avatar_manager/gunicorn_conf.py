"""gunicorn settings for the manager's API (python -m avatar_manager starts gunicorn with them).

Workload: handlers are short store transactions, except a cold start, whose handler sleeps in a
poll loop until the worker is ready (seconds). Threads, not processes, carry that waiting: the
gthread worker keeps a thread per request, cheap while it sleeps. Two processes use both cores of
a small host and let one be recycled while the other serves; 32 threads each let 64 requests wait
on cold starts at once without delaying warm ones. Override with WEB_CONCURRENCY and
GUNICORN_THREADS.
"""
import ctypes
import os
import signal

from avatar_manager.settings import Settings

_settings = Settings.from_env()
_host = f"[{_settings.host}]" if ":" in _settings.host else _settings.host

bind = f"{_host}:{_settings.port}"
workers = int(os.environ.get("WEB_CONCURRENCY", 2))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", 32))
# gthread workers beat the arbiter from their own loop, so a request that waits for a cold start
# does not count against this; it catches a worker that is truly stuck.
timeout = 30
graceful_timeout = 10
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 0))
max_requests_jitter = max_requests // 10
errorlog = "-"
accesslog = "-" if os.environ.get("ACCESS_LOG") else None
proc_name = "avatar_manager-api"

PR_SET_PDEATHSIG = 1


def on_starting(server):
    """The supervisor owns this process: if it dies, so do we (no orphan holding port 8607)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the supervisor died before the line above
        raise SystemExit("the supervisor is gone")
control_socket_disable = True  # several managers may share a host (tests, standbys)
