"""The SFTJob operator: kopf handlers (handlers.py), the pure renderers and status derivation, the
Kubernetes adapter (kube.py) and the admission webhook (webhook.py). `python -m sft_operator run` / `sft-operator-controller run`."""
