"""The transfer sidecar (``python -m sft_trainer.transfer``, container ``transfer``).

Runs beside the trainer in every pod of a job, with the job's training config and the only copy
of the credentials (the trainer container never gets them). Pod 0 fetches the job's remote
sources once into the source cache (``sources.py`` fixes the layout), restores the newest
exported full state into an empty checkpoint directory when asked, then exports every complete
checkpoint to the export target until SIGTERM. The other pods idle. Progress and outcomes go to
``<ckpt dir>/sft-operator/TRANSFERS.json`` (read by the reporter); a failure that retrying cannot
fix is one line naming the spec field and the source, in the termination log, and exit 2.

Modules: ``config`` (the config's transfer part), ``outcome`` (failures, their one line, the
retry schedule; pure), ``state`` (TRANSFERS.json), ``cache`` (a cache entry: lock, verified
files, COMPLETE.json), ``hf``/``s3``/``https`` (the sources), ``fetch``, ``export`` (and
restore), ``main``. docs/data.md describes the behaviour.
"""
