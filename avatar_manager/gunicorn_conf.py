"""gunicorn settings for the manager's API (python -m avatar_manager starts gunicorn with them).

Workload: handlers are short store transactions, except a cold start, whose handler sleeps in a
poll loop until the worker is ready (seconds), and relayed event streams, open for minutes. The
worker class is gevent's (avatar_manager/gunicorn_worker.py): every connection is a greenlet, a
few KB while it waits, so clients that are slow to send (or never finish a request) cost a
connection each, not one of a few dozen threads; with gthread, 64 such clients stopped the whole
API. Everything a handler waits on cooperates with gevent once gunicorn has monkey-patched the
worker: sockets (redis-py, requests, urllib), time.sleep, threading (locks, ThreadPoolExecutor).
SQLite and psutil calls block the worker's loop, each for well under a millisecond. Two processes
use both cores of a small host and let one be recycled while the other serves. Override with
WEB_CONCURRENCY and GUNICORN_WORKER_CONNECTIONS.
"""
import ctypes
import os
import resource
import signal

# `bind` comes from the command line (python -m avatar_manager passes AVATAR_MANAGER_HOST/PORT).
# Nothing of the app is imported here: this runs in gunicorn's master, before gevent patches the
# workers, and a module imported unpatched (ssl through aiohttp) would stay so.
workers = int(os.environ.get("WEB_CONCURRENCY", 2))
worker_class = "avatar_manager.gunicorn_worker.Worker"
# Open connections per process, idle or not; past it a process stops accepting until one closes
# (the kernel queues up to `backlog` more). 1000 leaves room for 500 stalled clients on one
# process while bounding memory: ~12 KB a connection (1000 stalled ones added 12 MB over both).
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", 1000))
# The worker beats the arbiter from a greenlet of its own, so a request that waits for a cold
# start does not count against this; it catches a process whose loop is truly stuck.
timeout = 30
graceful_timeout = 10
# An idle keep-alive connection stays open this long, and a request's head must arrive within it.
# Longer than clients keep pooled connections (httpx 5 s, requests until the server closes), so
# the server never closes one just as a client sends on it; 75 s as nginx.
keepalive = 75
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
    # A connection's greenlet that used the SQLite store holds its own connection to the file and
    # its -wal (the store keeps one per thread, and a greenlet counts as one): three files each.
    _allow_connections(3 * worker_connections + 100)  # + logs and outgoing requests


def _allow_connections(files: int) -> None:
    """A soft limit of 1024 open files (common) would refuse connections well before
    worker_connections: raise it as far as the hard limit lets us (the workers inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < files:
        resource.setrlimit(resource.RLIMIT_NOFILE, (files if hard == resource.RLIM_INFINITY else min(files, hard), hard))
control_socket_disable = True  # several managers may share a host (tests, standbys)
