"""`python -m sft_client` is the `sft-operator` CLI."""

from sft_client.cli import app

app()
