"""The serving core without Flask: the one Triton client (``client.TritonGateway``), its
batching of concurrent requests, background comparison calls, gevent helpers, the serving errors,
its metrics and its settings. The API (``imgcls_api``), the batch job (``imgcls_batch``) and the
bench import it; ``protocol.Gateway`` is what the API needs of it, and ``memory.MemoryGateway``
the one stand-in that answers from memory (the API's unit tests, the bench's "front alone" row).

This file imports nothing on purpose: gunicorn's master imports the API's settings (and so this
package) before it sets ``PROMETHEUS_MULTIPROC_DIR``, and prometheus_client decides where samples
live when it is first imported (``imgcls_api/__init__.py`` says the same).
"""
