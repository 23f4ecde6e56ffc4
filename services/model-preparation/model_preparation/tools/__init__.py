"""The pipeline's commands that are not DVC stages: ``bootstrap`` (``make model``, the model
``make up`` and compose serve), ``demo_data`` (the seeded demo dataset), ``compare`` and
``search`` (experiments). Each runs as ``python -m model_preparation.tools.<name>``."""
