"""The seed's Python API on the cluster: training_hub's ``sft()``, ``SFTAlgorithm`` and a backend,
and its ``osft()`` and ``OSFTAlgorithm`` (api/osft.py).

    from sft_client.api import sft    # was: from training_hub import sft

See docs/python-api.md. Modules: paths (where paths live), mapping (parameters -> SFTJob,
pure), results (status -> view and result, pure), progress_text (the view as text, pure),
display, jobs (connect, create, get, list, follow), lifecycle (suspend, resume, delete),
pod_logs, job_events, handle (one job by name), training_hub, uploads (what a file on this
machine becomes, pure), transfer (uploads and downloads through a short-lived pod), download.

Importing this package with training_hub installed registers the backend "kubernetes" for
training_hub's ``sft()`` (``register_with_training_hub``); without it nothing is imported.
"""

from sft_client.api.display import ProgressDisplay
from sft_client.api.handle import SFTJobHandle, open_job
from sft_client.api.job_events import JobEvent
from sft_client.api.jobs import (
    SFTJobNotFoundError,
    SFTJobRefusedError,
    connect,
    create_job,
    follow_job,
    get_job,
    list_jobs,
    wait_for_job,
)
from sft_client.api.lifecycle import Deletion, delete_job, resume_job, suspend_job
from sft_client.api.mapping import (
    ClusterOptions,
    ParameterProblem,
    SFTParameterError,
    build_sftjob,
)
from sft_client.api.osft import KubernetesOSFTBackend, OSFTAlgorithm, osft
from sft_client.api.pod_logs import LogsUnavailableError
from sft_client.api.results import (
    Checkpoint,
    JobView,
    SFTJobDeletedError,
    SFTJobFailedError,
    SFTJobResult,
    view_job,
)
from sft_client.api.training_hub import (
    Backend,
    InstructLabTrainingSFTBackend,
    KubernetesSFTBackend,
    Prepared,
    SFTAlgorithm,
    register_with_training_hub,
    sft,
    submit,
)
from sft_client.api.transfer import TransferError, TransferForbiddenError

__all__ = [
    "Backend",
    "Checkpoint",
    "ClusterOptions",
    "Deletion",
    "InstructLabTrainingSFTBackend",
    "JobEvent",
    "JobView",
    "KubernetesOSFTBackend",
    "KubernetesSFTBackend",
    "LogsUnavailableError",
    "OSFTAlgorithm",
    "ParameterProblem",
    "Prepared",
    "ProgressDisplay",
    "SFTAlgorithm",
    "SFTJobDeletedError",
    "SFTJobFailedError",
    "SFTJobHandle",
    "SFTJobNotFoundError",
    "SFTJobRefusedError",
    "SFTJobResult",
    "SFTParameterError",
    "TransferError",
    "TransferForbiddenError",
    "build_sftjob",
    "connect",
    "create_job",
    "delete_job",
    "follow_job",
    "get_job",
    "list_jobs",
    "open_job",
    "osft",
    "register_with_training_hub",
    "resume_job",
    "sft",
    "submit",
    "suspend_job",
    "view_job",
    "wait_for_job",
]

register_with_training_hub()
