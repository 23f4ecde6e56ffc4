"""gunicorn settings for the API (``gunicorn -c python:imgcls_api.gunicorn_conf``).

gevent workers (``API_WORKER_CLASS``, default ``gevent``): a request mostly waits on Triton, and
tritonclient.http is built on geventhttpclient, so one worker serves many requests on one shared
Triton client with greenlet switches instead of OS-thread hand-offs; the API's batching
(``batching.py``) passes requests between greenlets cheaply. Large images are decoded on the
hub's thread pool so they do not stall the worker (``cooperative.py``). ``gthread`` remains available:
each thread then keeps its own client (tritonclient.http is not thread-safe).

One worker by default (``WEB_CONCURRENCY``) with two Triton calls in flight (``BATCH_SLOTS``):
one batcher then sees every request. With several workers, keep-alive connections stick to
whichever worker accepted them, and an uneven split leaves one worker's batches big and the
other's empty — a Triton instance idle. Keep workers × slots near the model's Triton instances
(``publish.instance_count``); add workers when decoding needs more than one core.
"""

import os
import tempfile

# prometheus_client multiprocess mode: every worker writes its samples here, /metrics sums them.
# Must be set before a worker imports prometheus_client (workers import the app after fork).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="imgcls-metrics-"))

bind = os.environ.get("API_BIND", "0.0.0.0:5000")
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_class = os.environ.get("API_WORKER_CLASS", "gevent")
worker_connections = int(os.environ.get("API_WORKER_CONNECTIONS", "1000"))  # gevent
threads = int(os.environ.get("API_THREADS", "8"))  # gthread
timeout = int(os.environ.get("API_WORKER_TIMEOUT", "60"))
graceful_timeout = 10
keepalive = 5
# Workers heartbeat by touching a temp file on every loop; on a container's overlay /tmp that
# can block (gunicorn's FAQ): keep it in memory where /dev/shm exists.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = os.environ.get("API_ACCESS_LOG") or None  # the app logs each request as JSON
errorlog = "-"
loglevel = os.environ.get("API_LOG_LEVEL", "info")
wsgi_app = "imgcls_api:create_app()"


def child_exit(server, worker):
    """Drop a dead worker's live gauges from the multiprocess metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def when_ready(server):
    """One start-up line saying whether API keys are required (never the keys themselves)."""
    from imgcls_api.auth import describe
    from imgcls_api.settings import Settings

    server.log.info(describe(Settings.from_env()))
