"""``python -m pipelines.cli``: the ``flowad`` command (torchrun starts it so)."""

from pipelines.cli import app

app()
