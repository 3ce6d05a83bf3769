"""Where sft()'s paths live on the cluster (pure).

training_hub reads ``model_path``, ``data_path`` and ``ckpt_output_dir`` on the machine that
runs ``sft()``. On the cluster they are read inside the training pods, so each must name a
place a pod can reach:

``pvc://<claim>/<path>``
    ``<path>`` inside the PersistentVolumeClaim ``<claim>`` of the job's namespace. For
    ``ckpt_output_dir`` the claim becomes the job's checkpoint volume (``spec.checkpoints``).
    For the other paths the claim is mounted at ``/mnt/pvc/<claim>`` (read-only when only
    read from), or, when it is the checkpoint claim, found under the checkpoint mount.
a remote source: ``hf://org/name[@revision]``, a bare Hugging Face id (``org/name``, which
    means ``hf://``), ``s3://bucket/prefix`` (``model_path``); ``hf://datasets/org/name/file``,
    ``s3://bucket/key``, ``https://host/file`` (``data_path``)
    passed as is: the job's transfer sidecar fetches it once onto the job's volume before any
    rank starts, and the trainer reads that copy (sources.py, docs/data.md). Credentials come
    from Secrets named by ``hf_token_secret`` / ``s3_credentials_secret`` (mapping.py).
a file on this machine, ``data_path`` only (a relative path, or ``file:///abs/path``)
    uploaded by sft() before the job is created (uploads.py); the spec gets its claim path.
an absolute path (``/data/train.jsonl``)
    passed as is: it must exist in the pod, on a volume you add with ``volumes`` and
    ``volume_mounts`` or in the image.
a relative path (``./checkpoints``), ``ckpt_output_dir`` only, with ``checkpoint_claim_size``
    a directory inside a claim the operator creates for the job (``spec.checkpoints.claim``).

Anything else (a relative model or output path on your machine) is refused with the parameter
named: the pods cannot see your disk.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass, field

from sft_core import contract, sources
from sft_models.models import CheckpointVolume

PVC_SCHEME = "pvc://"
# Extra claims are mounted here, one directory per claim.
PVC_MOUNT_ROOT = "/mnt/pvc"
# A Hugging Face repo id: "name" or "org/name"; letters, digits, '-', '_', '.'.
HF_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
# A PersistentVolumeClaim name: a DNS-1123 subdomain.
CLAIM_NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MAX_CLAIM_NAME_LENGTH = 253
MAX_VOLUME_NAME_LENGTH = 63

# The parameters that may name a remote source (fetched by the transfer sidecar), and whether
# the source is a model (sources.parse_source's ``model``).
SOURCE_PARAMS: dict[str, bool] = {"model_path": True, "data_path": False}
REMOTE_SCHEMES = (sources.HF_SCHEME, sources.S3_SCHEME, sources.HTTPS_SCHEME)

# The path-valued sft() parameters other than ckpt_output_dir, and whether the pods write there.
POD_PATH_PARAMS: dict[str, bool] = {
    "model_path": False,
    "data_path": False,
    "data_output_dir": True,
    "tensorboard_log_dir": True,
}


class PathProblem(ValueError):
    """A path a pod cannot reach; ``param`` names the sft() parameter."""

    def __init__(self, param: str, message: str):
        self.param = param
        self.message = message
        super().__init__(f"{param}: {message}")


@dataclass(frozen=True)
class ClaimPath:
    """``pvc://claim/sub/path``: a path inside a PersistentVolumeClaim."""

    claim: str
    path: str  # relative, normalized; "" is the claim's root

    def url(self) -> str:
        return f"{PVC_SCHEME}{self.claim}/{self.path}" if self.path else f"{PVC_SCHEME}{self.claim}"


def parse_claim_path(value: str, param: str) -> ClaimPath:
    """Split ``pvc://claim/sub/path``; raises PathProblem naming ``param``."""
    rest = value[len(PVC_SCHEME) :]
    claim, _, sub = rest.partition("/")
    if not claim:
        raise PathProblem(param, f"{value!r} names no claim: write pvc://<claim>/<path>")
    if len(claim) > MAX_CLAIM_NAME_LENGTH or not CLAIM_NAME_PATTERN.match(claim):
        raise PathProblem(param, f"{claim!r} is not a PersistentVolumeClaim name (lowercase letters, digits, '-', '.')")
    parts = [p for p in sub.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathProblem(param, f"{value!r}: the path inside the claim may not contain '..'")
    return ClaimPath(claim=claim, path="/".join(parts))


def is_hugging_face_id(value: str) -> bool:
    return bool(HF_ID_PATTERN.match(value)) and not value.startswith(".") and ".." not in value


def claim_volume_name(claim: str) -> str:
    """A pod volume name (a DNS-1123 label, at most 63 characters) for an extra claim."""
    name = f"pvc-{claim.replace('.', '-')}"
    if len(name) <= MAX_VOLUME_NAME_LENGTH:
        return name
    digest = hashlib.sha256(claim.encode()).hexdigest()[:10]
    return f"{name[: MAX_VOLUME_NAME_LENGTH - 11].rstrip('-')}-{digest}"


def claim_mount_path(claim: str) -> str:
    return f"{PVC_MOUNT_ROOT}/{claim}"


@dataclass(frozen=True)
class CheckpointPlacement:
    """ckpt_output_dir as spec.checkpoints: an existing claim, or one the operator creates."""

    existing_claim: str | None
    path: str  # relative to the volume root

    def as_spec(self) -> dict[str, str]:
        """spec.checkpoints without the claim template (the caller adds size and class)."""
        aliases = {name: info.alias or name for name, info in CheckpointVolume.model_fields.items()}
        spec: dict[str, str] = {}
        if self.existing_claim is not None:
            spec[aliases["existing_claim"]] = self.existing_claim
        if self.path:
            spec[aliases["path"]] = self.path
        return spec


def place_checkpoints(ckpt_output_dir: str, creates_claim: bool) -> CheckpointPlacement:
    """Map ckpt_output_dir onto the checkpoint volume.

    ``pvc://claim/path`` uses an existing claim. A relative path is a directory inside the claim
    the operator creates, which needs ``checkpoint_claim_size`` (``creates_claim``).
    """
    param = "ckpt_output_dir"
    if not ckpt_output_dir and not creates_claim:
        raise PathProblem(
            param, "required: pvc://<claim>/<path>, or a relative path with checkpoint_claim_size (e.g. '100Gi')"
        )
    if ckpt_output_dir.startswith(PVC_SCHEME):
        if creates_claim:
            raise PathProblem(
                param,
                "names an existing claim (pvc://...) and checkpoint_claim_size asks for a new one: give one of them",
            )
        target = parse_claim_path(ckpt_output_dir, param)
        return CheckpointPlacement(existing_claim=target.claim, path=target.path)
    if "://" in ckpt_output_dir:
        raise PathProblem(param, f"{ckpt_output_dir!r}: only pvc://<claim>/<path> URLs are understood")
    if ckpt_output_dir.startswith("/"):
        raise PathProblem(
            param,
            f"{ckpt_output_dir!r}: checkpoints live on a volume the job owns, not at an absolute path "
            "in the pod: write pvc://<claim>/<path>, or a relative path with checkpoint_claim_size",
        )
    if not creates_claim:
        raise PathProblem(
            param,
            f"{ckpt_output_dir!r} is a path on this machine, which the pods cannot see: write "
            "pvc://<claim>/<path> for an existing claim, or pass checkpoint_claim_size (e.g. '100Gi') "
            "for the operator to create one",
        )
    parts = [p for p in ckpt_output_dir.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathProblem(param, f"{ckpt_output_dir!r}: a path inside the new claim may not contain '..'")
    return CheckpointPlacement(existing_claim=None, path="/".join(parts))


@dataclass
class PodPaths:
    """The result of placing the path parameters: values as the pods see them, plus mounts."""

    values: dict[str, str] = field(default_factory=dict)
    volumes: list[dict[str, object]] = field(default_factory=list)
    volume_mounts: list[dict[str, object]] = field(default_factory=list)


def resolve_pod_path(value: str, param: str, checkpoints: CheckpointPlacement) -> tuple[str, ClaimPath | None]:
    """The path as the pods see it, and the claim it needs mounted (None: nothing to mount)."""
    if value.startswith(PVC_SCHEME):
        target = parse_claim_path(value, param)
        if target.claim == checkpoints.existing_claim:
            # The checkpoint claim is already mounted (its root, at the checkpoint mount path).
            return posixpath.join(contract.CHECKPOINT_MOUNT_PATH, target.path).rstrip("/"), None
        return posixpath.join(claim_mount_path(target.claim), target.path).rstrip("/"), target
    if param in SOURCE_PARAMS and value.startswith(REMOTE_SCHEMES):
        # Fetched once by the transfer sidecar; the operator's models check the URI (and the
        # error then names the parameter with the spec field).
        return value, None
    if "://" in value:
        schemes = "hf://, s3://, https:// or pvc://<claim>/<path>" if param in SOURCE_PARAMS else "pvc://<claim>/<path>"
        raise PathProblem(param, f"{value!r}: only {schemes} URLs are understood")
    if value.startswith("/"):
        return value, None
    if param == "model_path" and is_hugging_face_id(value):
        return value, None  # a bare Hugging Face id: hf://<id> (the operator fetches it)
    hint = "a Hugging Face id or hf://..., s3://..., " if param == "model_path" else ""
    raise PathProblem(
        param,
        f"{value!r} is a path on this machine, which the pods cannot see: use {hint}"
        "pvc://<claim>/<path>, or an absolute path on a volume mounted with volumes/volume_mounts",
    )


def place_pod_paths(paths: dict[str, str], checkpoints: CheckpointPlacement) -> PodPaths:
    """Resolve each of ``paths`` (param -> value, params from POD_PATH_PARAMS) and mount each
    extra claim once, read-only unless one of the params that use it is written to."""
    placed = PodPaths()
    claims: dict[str, bool] = {}  # claim -> written to
    problems: list[PathProblem] = []
    for param, value in paths.items():
        try:
            pod_value, claim = resolve_pod_path(value, param, checkpoints)
        except PathProblem as problem:
            problems.append(problem)
            continue
        placed.values[param] = pod_value
        if claim is not None:
            claims[claim.claim] = claims.get(claim.claim, False) or POD_PATH_PARAMS[param]
    if problems:
        raise PathProblems(problems)
    for claim_name, written in claims.items():
        name = claim_volume_name(claim_name)
        source: dict[str, object] = {"claimName": claim_name}
        mount: dict[str, object] = {"name": name, "mountPath": claim_mount_path(claim_name)}
        if not written:
            # Read-only in the volume source too, not only in the mount: the kubelet applies the
            # pods' fsGroup (ownership and mode) to a claim unless its source is read-only, and
            # this claim is the user's, shared with whatever else reads it.
            source["readOnly"] = True
            mount["readOnly"] = True
        placed.volumes.append({"name": name, "persistentVolumeClaim": source})
        placed.volume_mounts.append(mount)
    return placed


class PathProblems(ValueError):
    def __init__(self, problems: list[PathProblem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def pod_path_to_url(pod_path: str, checkpoints_claim: str | None) -> str:
    """A path under the checkpoint mount, as pvc://claim/path when the claim is known, so that
    it can be given straight back to sft() (e.g. a checkpoint as the next model_path)."""
    mount = contract.CHECKPOINT_MOUNT_PATH
    if checkpoints_claim and (pod_path == mount or pod_path.startswith(mount + "/")):
        rest = pod_path[len(mount) :].strip("/")
        return ClaimPath(checkpoints_claim, rest).url()
    return pod_path
