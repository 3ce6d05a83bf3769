"""Files between this machine and a claim: what is uploaded where, and the short-lived pod that
does it (pure; transfer.py runs it).

``sft(data_path="./train.jsonl")`` names a file on the caller's machine. It is uploaded before
the job is created, to a claim the training pods mount, under a content-addressed path::

    <claim>/.sft-uploads/sha256-<first 16 hex digits>/<file name>

The claim is the job's checkpoint claim when ``ckpt_output_dir`` names an existing one
(``pvc://claim/...``: it is mounted in every pod already, with the access mode the job needs,
and a second run with the same file finds it there and sends nothing), else a claim made for the
upload, ``<job>-upload``, sized from the file and owned by the SFTJob once it exists (deleted
with it). The path depends only on the content and the name, so ``spec.dataPath`` (a training
field: checkpoint ownership hashes it) is the same for the same file, and another file never
overwrites one a job reads.

The transfer runs through a pod of the job's trainer image (it has Python) that mounts the
claim and idles; the client execs a small Python program in it over the API server's exec
stream: RECEIVE_SCRIPT reads exactly the announced number of bytes from stdin (the exec stream
of Kubernetes before 1.29 cannot close stdin, so the size ends the stream), hashes them, and
moves the file into place only when size and sha256 match. SEND_SCRIPT writes a checkpoint
directory to stdout as a tar stream from a read-only mount, with the sizes first and each
file's sha256 after it on stderr.
"""

from __future__ import annotations

import math
import posixpath
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from sft_client.api.paths import PVC_SCHEME, ClaimPath, PathProblem, parse_claim_path
from sft_core import contract
from sft_models import pod_security

FILE_SCHEME = "file://"
UPLOAD_DIR = ".sft-uploads"
# The helper pod's container, volume and mount.
HELPER_CONTAINER = "transfer"
HELPER_VOLUME = "claim"
HELPER_MOUNT = "/sft-transfer"
# Labels of what the client creates, so that a leftover (a client killed mid-upload) is found.
LABEL_TRANSFER = "finetune.dev/transfer"  # upload | download
LABEL_TRANSFER_FOR = "finetune.dev/transfer-for"  # the job's name
ANNOTATION_UPLOAD_SHA256 = "finetune.dev/upload-sha256"
ANNOTATION_UPLOAD_SOURCE = "finetune.dev/upload-source"
# A helper pod whose client died ends by itself (its idle loop exits), so it holds no node.
HELPER_POD_DEADLINE_S = 6 * 3600
HELPER_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
MIB = 1 << 20
# An upload claim holds the file plus room for the file system's own use (journal, reserved
# blocks): 10 % and 256 MiB, and at least 1 GiB (many provisioners' smallest volume).
UPLOAD_CLAIM_MIN_MIB = 1024
UPLOAD_CLAIM_SLACK_MIB = 256
UPLOAD_CLAIM_SLACK_RATIO = 0.10


def local_data_file(value: str) -> str | None:
    """The path on this machine that a ``data_path`` names, or None when it names something in
    the pods or remote: a relative path (``train.jsonl``, ``./data/train.jsonl``) or a
    ``file://`` URI (``file:///home/me/train.jsonl``). An absolute path stays a path in the pods."""
    if value.startswith(FILE_SCHEME):
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise PathProblem("data_path", f"{value!r}: write file:///<absolute path on this machine>")
        return unquote(parts.path)
    if "://" in value or value.startswith("/"):
        return None
    return value


@dataclass(frozen=True)
class LocalFile:
    """A file on this machine, as measured before the upload."""

    path: str  # as given (relative to the working directory, or absolute)
    size: int
    sha256: str


@dataclass(frozen=True)
class NewClaim:
    """The claim an upload creates (``<job>-upload``)."""

    size: str
    access_modes: tuple[str, ...]
    storage_class: str | None = None


@dataclass(frozen=True)
class UploadPlan:
    file: LocalFile
    target: ClaimPath  # the claim and the path in it
    new_claim: NewClaim | None  # None: the claim exists (the job's checkpoint claim)

    @property
    def data_url(self) -> str:
        """What becomes the job's data_path (paths.py maps it into the pods)."""
        return self.target.url()


def upload_file_name(path: str) -> str:
    """The file's name in the claim: its base name, with characters other than letters, digits,
    '.', '_' and '-' replaced (the name travels in a manifest and a command line)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", PurePosixPath(path.replace("\\", "/")).name).strip("-")
    return name if name not in ("", ".", "..") else "data.jsonl"


def upload_path(file: LocalFile) -> str:
    """Where in the claim the file goes: by content, so the same file is found again."""
    return f"{UPLOAD_DIR}/sha256-{file.sha256[:16]}/{upload_file_name(file.path)}"


def upload_claim_name(job_name: str) -> str:
    return f"{job_name}-upload"


def upload_claim_size(size_bytes: int) -> str:
    """The upload claim's size for a file of ``size_bytes`` (a quantity in Mi)."""
    mib = math.ceil(size_bytes * (1 + UPLOAD_CLAIM_SLACK_RATIO) / MIB) + UPLOAD_CLAIM_SLACK_MIB
    return f"{max(UPLOAD_CLAIM_MIN_MIB, mib)}Mi"


def plan_upload(
    file: LocalFile, *, job_name: str, ckpt_output_dir: str, nnodes: int | None, storage_class: str | None
) -> UploadPlan:
    """Where ``file`` goes: the existing checkpoint claim ``ckpt_output_dir`` names, else a new
    claim ``<job>-upload`` that every pod of the job can mount (ReadWriteMany for more than one
    node: written by the upload pod, read from several nodes)."""
    path = upload_path(file)
    if ckpt_output_dir.startswith(PVC_SCHEME):
        claim = parse_claim_path(ckpt_output_dir, "ckpt_output_dir").claim
        return UploadPlan(file, ClaimPath(claim, path), None)
    modes = ("ReadWriteMany",) if (nnodes or 1) > 1 else ("ReadWriteOnce",)
    return UploadPlan(
        file, ClaimPath(upload_claim_name(job_name), path), NewClaim(upload_claim_size(file.size), modes, storage_class)
    )


def helper_labels(purpose: str, job_name: str) -> dict[str, str]:
    return {LABEL_TRANSFER: purpose, LABEL_TRANSFER_FOR: job_name}


def claim_manifest(plan: UploadPlan, job_name: str) -> dict[str, Any]:
    """The upload claim (plan.new_claim must be set)."""
    assert plan.new_claim is not None
    spec: dict[str, Any] = {
        "accessModes": list(plan.new_claim.access_modes),
        "resources": {"requests": {"storage": plan.new_claim.size}},
    }
    if plan.new_claim.storage_class is not None:
        spec["storageClassName"] = plan.new_claim.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": plan.target.claim,
            "labels": helper_labels("upload", job_name),
            "annotations": {
                ANNOTATION_UPLOAD_SHA256: plan.file.sha256,
                ANNOTATION_UPLOAD_SOURCE: upload_file_name(plan.file.path),
            },
        },
        "spec": spec,
    }


def owner_reference(job: dict[str, Any]) -> dict[str, Any]:
    """The SFTJob as the owner of an upload claim: the garbage collector deletes the claim with
    the job. Not a controller reference (the operator controls only what it renders) and no
    blockOwnerDeletion (that would need update rights on sftjobs/finalizers)."""
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "name": job["metadata"]["name"],
        "uid": job["metadata"]["uid"],
    }


# The helper's main process: idle until deleted (SIGTERM; as PID 1 it must handle it to exit at
# once) or until the deadline, whichever comes first.
IDLE_SCRIPT = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    f"time.sleep({HELPER_POD_DEADLINE_S})\n"
)


def helper_pod_manifest(
    name: str,
    *,
    claim: str,
    read_only: bool,
    image: str,
    image_pull_policy: str,
    fs_group: int,
    purpose: str,
    job_name: str,
) -> dict[str, Any]:
    """A short-lived pod that mounts ``claim`` at HELPER_MOUNT and idles while the client execs
    into it: the restricted profile (uid 65532, no privilege escalation, no capabilities,
    RuntimeDefault seccomp, read-only root), no ServiceAccount token, never restarted.

    Writing (an upload) needs the claim group-writable for the pods' group: ``fs_group`` as the
    training pods have it. Reading (a download) mounts the claim read-only and sets no fsGroup,
    so the kubelet changes nothing on it; the files are the trainer's (uid 65532), readable."""
    security = pod_security.pod_security_context(fs_group)
    if read_only:
        security = {key: value for key, value in security.items() if key not in ("fsGroup", "fsGroupChangePolicy")}
        security["supplementalGroups"] = [fs_group]
    mount: dict[str, Any] = {"name": HELPER_VOLUME, "mountPath": HELPER_MOUNT}
    claim_source: dict[str, Any] = {"claimName": claim}
    if read_only:
        mount["readOnly"] = True
        claim_source["readOnly"] = True
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": helper_labels(purpose, job_name)},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 5,
            "activeDeadlineSeconds": HELPER_POD_DEADLINE_S,
            "securityContext": security,
            "containers": [
                {
                    "name": HELPER_CONTAINER,
                    "image": image,
                    "imagePullPolicy": image_pull_policy,
                    "command": ["python3", "-c", IDLE_SCRIPT],
                    "securityContext": pod_security.container_security_context(read_only_root=True),
                    "resources": HELPER_RESOURCES,
                    "volumeMounts": [mount],
                }
            ],
            "volumes": [{"name": HELPER_VOLUME, "persistentVolumeClaim": claim_source}],
        },
    }


# Runs in the helper pod: argv = destination, size, sha256. Prints one JSON line first ("present":
# the file is there already with that content, nothing is sent; "send": stream it), then one with
# the outcome. Writes <dest>.partial and renames it only after size and sha256 matched.
RECEIVE_SCRIPT = r"""
import hashlib, json, os, sys
dest, size, want = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def say(**fields):
    sys.stdout.write(json.dumps(fields) + "\n"); sys.stdout.flush()
def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
if os.path.isfile(dest) and os.path.getsize(dest) == size and digest(dest) == want:
    say(state="present", size=size, sha256=want); sys.exit(0)
os.makedirs(os.path.dirname(dest), exist_ok=True)
say(state="send")
tmp, h, left, src = dest + ".partial", hashlib.sha256(), size, sys.stdin.buffer
try:
    with open(tmp, "wb") as f:
        while left:
            block = src.read1(min(left, 1 << 20))
            if not block:
                break
            f.write(block); h.update(block); left -= len(block)
        f.flush(); os.fsync(f.fileno())
except OSError as error:  # no space, an I/O error: nothing half-written stays
    os.unlink(tmp)
    say(state="failed", error=str(error)); sys.exit(1)
if left or h.hexdigest() != want:
    os.unlink(tmp)
    say(state="mismatch", size=size - left, sha256=h.hexdigest()); sys.exit(1)
os.replace(tmp, dest)
fd = os.open(os.path.dirname(dest), os.O_RDONLY); os.fsync(fd); os.close(fd)
say(state="stored", size=size, sha256=h.hexdigest())
"""

# Runs in the helper pod: argv = a directory on the read-only mount. stderr: one JSON line with
# every entry and file size (before any data), then, after the tar stream on stdout has ended,
# one with each file's sha256 as read. Only directories and regular files (a checkpoint has no
# other kind); anything else is refused, not followed.
SEND_SCRIPT = r"""
import hashlib, json, os, stat, sys, tarfile
root = sys.argv[1]
def fail(message):
    sys.stderr.write(json.dumps({"error": message}) + "\n"); sys.stderr.flush(); sys.exit(3)
if not os.path.isdir(root):
    fail(root + ": no such directory")
entries = []
for top, dirs, files in os.walk(root):
    dirs.sort()
    for name in dirs + sorted(files):
        path = os.path.join(top, name)
        st = os.lstat(path)
        rel = os.path.relpath(path, root)
        if stat.S_ISDIR(st.st_mode):
            entries.append((rel, None, st))
        elif stat.S_ISREG(st.st_mode):
            entries.append((rel, st.st_size, st))
        else:
            fail(rel + ": not a regular file or directory")
sys.stderr.write(json.dumps({"files": [[rel, size] for rel, size, _ in entries]}) + "\n"); sys.stderr.flush()
class Hashing:
    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()
    def read(self, n=-1):
        block = self.f.read(n); self.h.update(block); return block
out = tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT)
sums = {}
for rel, size, st in entries:
    info = tarfile.TarInfo(rel)
    info.mtime = int(st.st_mtime)
    if size is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        out.addfile(info)
        continue
    info.size, info.mode = size, 0o644
    with open(os.path.join(root, rel), "rb") as f:
        reader = Hashing(f)
        out.addfile(info, reader)
    sums[rel] = reader.h.hexdigest()
out.close(); sys.stdout.buffer.flush()
sys.stderr.write(json.dumps({"sha256": sums}) + "\n")
"""


def receive_command(plan: UploadPlan) -> list[str]:
    dest = posixpath.join(HELPER_MOUNT, plan.target.path)
    return ["python3", "-c", RECEIVE_SCRIPT, dest, str(plan.file.size), plan.file.sha256]


def send_command(directory_in_claim: str) -> list[str]:
    return ["python3", "-c", SEND_SCRIPT, posixpath.join(HELPER_MOUNT, directory_in_claim)]


@dataclass(frozen=True)
class Permission:
    verb: str
    resource: str
    subresource: str = ""

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}{'/' + self.subresource if self.subresource else ''}"


# What a transfer does with the caller's own rights. An exec over a websocket is a GET of
# pods/exec (Kubernetes before 1.30 authorizes it as "get"; later ones check "create" too).
HELPER_POD_PERMISSIONS = (
    Permission("create", "pods"),
    Permission("get", "pods"),
    Permission("delete", "pods"),
    Permission("create", "pods", "exec"),
    Permission("get", "pods", "exec"),
)
NEW_CLAIM_PERMISSIONS = (
    Permission("create", "persistentvolumeclaims"),
    Permission("patch", "persistentvolumeclaims"),
    Permission("delete", "persistentvolumeclaims"),
)


def needed_permissions(plan: UploadPlan | None) -> tuple[Permission, ...]:
    """What an upload (plan) or a download (None) needs in the job's namespace."""
    if plan is not None and plan.new_claim is not None:
        return HELPER_POD_PERMISSIONS + NEW_CLAIM_PERMISSIONS
    return HELPER_POD_PERMISSIONS


def forbidden_message(
    user_action: str, namespace: str, missing: list[Permission] | tuple[Permission, ...], why: str
) -> str:
    """One line naming what the caller may not do and why the client needs it."""
    listed = ", ".join(str(p) for p in missing)
    return f"{user_action} needs these rights in namespace {namespace}, which you lack: {listed} ({why})"


def checkpoint_dir_in_claim(checkpoints_path: str | None, checkpoint_path: str) -> str:
    """A checkpoint's directory relative to its claim's root: spec.checkpoints.path joined with
    the status's path (relative to the checkpoint directory, e.g. hf_format/samples_64)."""
    joined = posixpath.normpath(posixpath.join(checkpoints_path or "", checkpoint_path))
    if joined.startswith("../") or joined == ".." or joined.startswith("/"):
        raise ValueError(f"{checkpoint_path!r}: outside the checkpoint volume")
    return joined


def safe_member_path(name: str) -> str | None:
    """A tar member's path if it stays inside the target directory (relative, no '..'), else None."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not name or name.startswith("\\"):
        return None
    normalized = posixpath.normpath(name)
    return None if normalized == ".." or normalized.startswith("../") else normalized
