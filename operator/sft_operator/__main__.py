"""`python -m sft_operator` is `sft-operator-controller`."""

from sft_operator.cli import app

app()
