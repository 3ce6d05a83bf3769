"""`python -m sft_reporter`: the reporter sidecar."""

from sft_reporter.sidecar import main

raise SystemExit(main())
