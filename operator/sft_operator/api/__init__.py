"""The seed's Python API on the cluster: training_hub's ``sft()``, ``SFTAlgorithm`` and a backend.

    from sft_operator.api import sft    # was: from training_hub import sft

See docs/python-api.md. Modules: paths (where paths live), mapping (parameters -> SFTJob,
pure), results (status -> progress and result, pure), display, jobs (API I/O), training_hub.
"""

from sft_operator.api.display import ProgressDisplay
from sft_operator.api.jobs import (
    SFTJobNotFoundError,
    connect,
    create_job,
    follow_job,
    get_job,
    list_jobs,
    wait_for_job,
)
from sft_operator.api.mapping import (
    ClusterOptions,
    ParameterProblem,
    SFTParameterError,
    build_sftjob,
)
from sft_operator.api.results import (
    Checkpoint,
    JobView,
    SFTJobDeletedError,
    SFTJobFailedError,
    SFTJobResult,
    view_job,
)
from sft_operator.api.training_hub import (
    Backend,
    InstructLabTrainingSFTBackend,
    KubernetesSFTBackend,
    SFTAlgorithm,
    sft,
)

__all__ = [
    "Backend",
    "Checkpoint",
    "ClusterOptions",
    "InstructLabTrainingSFTBackend",
    "JobView",
    "KubernetesSFTBackend",
    "ParameterProblem",
    "ProgressDisplay",
    "SFTAlgorithm",
    "SFTJobDeletedError",
    "SFTJobFailedError",
    "SFTJobNotFoundError",
    "SFTJobResult",
    "SFTParameterError",
    "build_sftjob",
    "connect",
    "create_job",
    "follow_job",
    "get_job",
    "list_jobs",
    "sft",
    "view_job",
    "wait_for_job",
]
