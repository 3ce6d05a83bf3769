"""The progress reporter sidecar (`python -m sft_reporter`): it runs in every training pod from the
operator's image, reads the checkpoint volume and publishes a checked summary (sidecar.py)."""
