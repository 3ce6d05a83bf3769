"""The client: the Python API (`sft_client.api`: training_hub's sft()/osft() signatures, job handles)
and the `sft-operator` command line (`sft_client.cli`). It shares the core and the API models with
the operator and never imports it."""
