"""gunicorn settings for the API (``gunicorn -c python:imgcls_api.gunicorn_conf``).

gevent workers (``API_WORKER_CLASS``, default ``gevent``): a request mostly waits on Triton, and
tritonclient.http is built on geventhttpclient, so one worker serves many requests on one shared
Triton client with greenlet switches instead of OS-thread hand-offs; the API's batching
(``imgcls.gateway.batching``) passes requests between greenlets cheaply. Large images are decoded on the
hub's thread pool so they do not stall the worker (``imgcls.gateway.cooperative``). ``gthread`` remains available:
each thread then keeps its own client (tritonclient.http is not thread-safe).

One worker by default (``WEB_CONCURRENCY``) with two Triton calls in flight (``BATCH_SLOTS``):
one batcher then sees every request. With several workers, keep-alive connections stick to
whichever worker accepted them, and an uneven split leaves one worker's batches big and the
other's empty — a Triton instance idle. Keep workers × slots near the model's Triton instances
(``publish.instance_count``); add workers when decoding needs more than one core.
"""

import os
import shutil
import sys
import tempfile

# prometheus_client multiprocess mode: every worker writes its samples here, /metrics sums them.
# Must be set before prometheus_client is imported (it picks its value store at import).
# A folder made here is the server's own and goes when it exits (one left per start otherwise).
_OWN_METRICS_DIR = None
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    _OWN_METRICS_DIR = tempfile.mkdtemp(prefix="imgcls-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _OWN_METRICS_DIR

# Imported here, not in child_exit: that hook runs in the SIGCHLD handler, and a first import
# there can interrupt itself when two workers exit together (a circular-import error that kept
# the server from stopping cleanly). The folder is set above, so the import sees it.
from prometheus_client import multiprocess  # noqa: E402

from imgcls_api.settings import ServerSettings, Settings  # noqa: E402

try:
    _server, _app = ServerSettings.from_env(), Settings.from_env()
except ValueError as exc:  # one line naming the variable, not a traceback
    sys.exit(f"imgcls API: {exc}")

bind = _server.api_bind
workers = _server.web_concurrency
worker_class = _server.api_worker_class
worker_connections = _server.api_worker_connections  # gevent
threads = _server.api_threads  # gthread
timeout = _server.api_worker_timeout
graceful_timeout = 10
keepalive = 5
# Workers heartbeat by touching a temp file on every loop; on a container's overlay /tmp that
# can block (gunicorn's FAQ): keep it in memory where /dev/shm exists.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = _server.api_access_log or None  # the app logs each request as JSON
errorlog = "-"
loglevel = _app.api_log_level
wsgi_app = "imgcls_api:create_app()"


def child_exit(server, worker):
    """Drop a dead worker's live gauges from the multiprocess metrics."""
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics folder this server made (one given by the environment is kept)."""
    if _OWN_METRICS_DIR is not None:
        shutil.rmtree(_OWN_METRICS_DIR, ignore_errors=True)


def when_ready(server):
    """One start-up line saying whether API keys are required (never the keys themselves)."""
    from imgcls_api.auth import describe

    server.log.info(describe(_app))
