"""The SFTJob operator: kopf handlers (handlers.py), the pure renderers and status derivation, the
Kubernetes adapter and the admission webhook. `python -m sft_operator run` / `sft-operator-controller run`."""
