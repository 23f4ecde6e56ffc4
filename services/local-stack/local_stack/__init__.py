"""Run the stack without Docker: the real tritonserver (from the nvidia-pytriton wheel) + the API.

One launcher, used by ``make up`` (``python -m local_stack``) and by the test fixtures.
"""
