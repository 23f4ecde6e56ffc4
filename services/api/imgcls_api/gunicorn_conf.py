"""gunicorn settings for the API (``gunicorn -c python:imgcls_api.gunicorn_conf``).

gthread workers: each worker thread keeps its own Triton client (tritonclient.http is not
thread-safe), and concurrent requests reach Triton concurrently so dynamic batching can form
batches. Threads mostly wait on Triton or decode images in Pillow (which releases the GIL).
"""

import os
import tempfile

# prometheus_client multiprocess mode: every worker writes its samples here, /metrics sums them.
# Must be set before a worker imports prometheus_client (workers import the app after fork).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="imgcls-metrics-"))

bind = os.environ.get("API_BIND", "0.0.0.0:5000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("API_THREADS", "8"))
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
