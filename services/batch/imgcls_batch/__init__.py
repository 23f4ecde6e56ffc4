"""Batch jobs over an archive: ``python -m imgcls_batch`` (``make classify``)."""
