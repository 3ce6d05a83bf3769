"""`python -m sft_operator` is the `sft-operator` CLI."""

from sft_operator.cli import app

app()
