"""Files between this machine and a claim, through a short-lived pod and the exec stream (I/O).

uploads.py decides what goes where and renders the pod and the claim; this module creates
them, streams the bytes over the API server's exec websocket (nothing but the API server is
reached, with the caller's own rights), checks sizes and sha256 on both ends, and deletes the
pod whatever happens. See docs/data.md, "From your laptop".
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import secrets
import shutil
import socket
import string
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_client.api import uploads
from sft_client.api.display import ByteProgress
from sft_client.api.uploads import LocalFile, Permission, UploadPlan
from sft_core import contract
from sft_models import pod_security

# How long a helper pod may take to run (scheduling, pulling the trainer image).
HELPER_START_TIMEOUT_S = 600.0
# How long the exec stream may stay silent (hashing a large file already there counts).
EXEC_IDLE_TIMEOUT_S = 900.0
# Bytes per stdin frame: small enough for every hop's frame limits, large enough to be cheap.
SEND_BLOCK = 256 * 1024
READ_BLOCK = 1 << 20
# Waiting reasons a helper pod does not recover from by waiting.
FATAL_WAITING_REASONS = frozenset(
    {"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)
# The exec stream's channels (the v4 channel protocol).
STDIN, STDOUT, STDERR, STATUS = 0, 1, 2, 3


class TransferError(RuntimeError):
    """An upload or download that did not complete; nothing half-done is left where it counts."""


class TransferForbiddenError(TransferError, PermissionError):
    """The caller lacks a right the transfer needs; the message names it."""


ProgressFactory = Callable[[str, int | None], ByteProgress]


def default_progress(description: str, total: int | None) -> ByteProgress:
    return ByteProgress(description, total)


# --- this machine -----------------------------------------------------------------------------
def measure_local_file(path: str, progress: ProgressFactory = default_progress) -> LocalFile:
    """Size and sha256 of a file on this machine (read once, with progress); raises
    FileNotFoundError / IsADirectoryError for the caller to name the parameter."""
    local = Path(path)
    if local.is_dir():
        raise IsADirectoryError(f"{path!r} is a directory; data_path names one JSONL file")
    size = local.stat().st_size
    digest = hashlib.sha256()
    with open(local, "rb") as source, progress(f"sha256 {path}", size) as bar:
        while block := source.read(READ_BLOCK):
            digest.update(block)
            bar.advance(len(block))
    return LocalFile(path=path, size=size, sha256=digest.hexdigest())


# --- rights -----------------------------------------------------------------------------------
def missing_permissions(api_client: Any, namespace: str, wanted: tuple[Permission, ...]) -> list[Permission]:
    """The rights in ``wanted`` that the caller lacks in ``namespace`` (SelfSubjectAccessReviews,
    which every authenticated user may create). If the reviews themselves cannot be made, none
    are reported: the requests' own 403s then say what is missing."""
    import kubernetes.client
    from kubernetes.client.exceptions import ApiException

    authz = kubernetes.client.AuthorizationV1Api(api_client)
    missing = []
    for permission in wanted:
        attributes = {"namespace": namespace, "verb": permission.verb, "resource": permission.resource}
        if permission.subresource:
            attributes["subresource"] = permission.subresource
        try:
            review = authz.create_self_subject_access_review({"spec": {"resourceAttributes": attributes}})  # type: ignore[arg-type]  # dicts are sent as is
        except ApiException:
            return []
        if not (review.status is not None and review.status.allowed):  # the server always sets status
            missing.append(permission)
    return missing


def _server_message(exc: Any) -> str:
    try:
        return json.loads(exc.body or "").get("message") or f"{exc.status} {exc.reason}"
    except (ValueError, AttributeError):
        return f"{exc.status} {exc.reason}"


def _refused(exc: Any, action: str, namespace: str, refused: tuple[Permission, ...], why: str) -> TransferError:
    """An API error as a TransferError; a 403 names the right it refused and why it is needed."""
    if exc.status == 403:
        return TransferForbiddenError(
            f"{uploads.forbidden_message(action, namespace, refused, why)}: the API server said: {_server_message(exc)}"
        )
    return TransferError(f"{action}: {_server_message(exc)}")


# --- the helper pod ---------------------------------------------------------------------------
def helper_pod_name(job_name: str, purpose: str) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return f"{job_name}-{purpose}-{''.join(secrets.choice(alphabet) for _ in range(5))}"


def _pod_problem(pod: Any) -> tuple[bool, str]:
    """(fatal, why it does not run yet) from a pod's status."""
    status = pod.status
    if status is None:
        return False, "no status yet"
    for container in status.container_statuses or []:
        state = container.state
        if state is not None and state.terminated is not None:
            term = state.terminated
            return (
                True,
                f"its container ended: {term.reason or 'exit ' + str(term.exit_code)} {term.message or ''}".strip(),
            )
        if state is not None and state.waiting is not None and state.waiting.reason:
            waiting = state.waiting
            return waiting.reason in FATAL_WAITING_REASONS, f"{waiting.reason}: {waiting.message or ''}".strip(": ")
    if status.phase in ("Failed", "Succeeded"):
        return True, f"phase {status.phase}: {status.reason or ''} {status.message or ''}".strip()
    for condition in status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return False, f"not scheduled: {condition.message or condition.reason}"
    if not pod.spec.node_name:
        return False, "not scheduled yet"
    return False, f"phase {status.phase}"


def wait_running(core: Any, name: str, namespace: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    why = "not created"
    while True:
        pod = core.read_namespaced_pod(name, namespace)
        if (
            pod.status is not None
            and pod.status.phase == "Running"
            and all(
                c.state is not None and c.state.running is not None for c in pod.status.container_statuses or [None]
            )
        ):
            return
        fatal, why = _pod_problem(pod)
        if fatal:
            raise TransferError(f"pod {namespace}/{name} cannot run: {why}")
        if time.monotonic() >= deadline:
            raise TransferError(f"pod {namespace}/{name} did not start within {timeout_s:.0f}s: {why}")
        time.sleep(0.5)


@contextmanager
def helper_pod(
    api_client: Any, namespace: str, manifest: dict[str, Any], *, action: str, start_timeout_s: float
) -> Iterator[str]:
    """Create the pod, wait until it runs, yield its name; delete it on the way out, always
    (also on Ctrl-C), and wait (bounded) until it is gone so the claim is free again."""
    import kubernetes.client
    from kubernetes.client.exceptions import ApiException

    core = kubernetes.client.CoreV1Api(api_client)
    name = manifest["metadata"]["name"]
    try:
        core.create_namespaced_pod(namespace, manifest)  # type: ignore[arg-type]  # dicts are sent as is
    except ApiException as exc:
        raise _refused(
            exc, action, namespace, (Permission("create", "pods"),), "it runs a short-lived pod that mounts the claim"
        ) from None
    try:
        wait_running(core, name, namespace, start_timeout_s)
        yield name
    finally:
        delete_helper_pod(core, name, namespace)


def delete_helper_pod(core: Any, name: str, namespace: str, timeout_s: float = 60.0) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=1)
    except ApiException as exc:
        if exc.status == 404:
            return
        raise
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(0.5)


# --- the exec stream --------------------------------------------------------------------------
Frame = tuple[int, bytes]  # (channel, payload)


class ExecSession:
    """One exec in a pod over the API server's websocket (v4 channel protocol), read frame by
    frame: stdout and stderr are buffered separately, nothing else is kept (the client's own
    reader would keep a copy of everything received).

    ``frames`` yields (channel, payload) and stops when the stream closes; ``send`` writes to
    stdin. ``ExecSession.over(ws)`` makes both from the kubernetes client's websocket."""

    def __init__(self, frames: Iterator[Frame], send: Callable[[bytes], None], close: Callable[[], None]):
        self._frames = frames
        self._send = send
        self._close = close
        self.buffers = {STDOUT: bytearray(), STDERR: bytearray(), STATUS: bytearray()}
        self.closed = False

    @classmethod
    def over(cls, ws: Any, idle_timeout_s: float = EXEC_IDLE_TIMEOUT_S) -> ExecSession:
        from websocket import ABNF, WebSocketConnectionClosedException

        ws.sock.settimeout(idle_timeout_s)

        def frames() -> Iterator[Frame]:
            while True:
                try:
                    opcode, frame = ws.sock.recv_data_frame(True)
                except WebSocketConnectionClosedException:
                    return
                except (socket.timeout, TimeoutError):
                    raise TransferError(f"the pod sent nothing for {idle_timeout_s:.0f}s") from None
                if opcode == ABNF.OPCODE_CLOSE:
                    return
                data = frame.data if isinstance(frame.data, bytes) else frame.data.encode()
                if opcode in (ABNF.OPCODE_BINARY, ABNF.OPCODE_TEXT) and data:
                    yield data[0], data[1:]

        return cls(frames(), lambda data: ws.write_channel(STDIN, data), ws.close)

    def _pump(self) -> None:
        if self.closed:
            return
        frame = next(self._frames, None)
        if frame is None:
            self.closed = True
        elif frame[0] in self.buffers:
            self.buffers[frame[0]].extend(frame[1])

    def send(self, data: bytes) -> None:
        self._send(data)

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of stdout, fewer only at its end (a file object for tarfile)."""
        buffer = self.buffers[STDOUT]
        want = READ_BLOCK if size is None or size < 0 else size
        while len(buffer) < want and not self.closed:
            self._pump()
        chunk = bytes(buffer[:want])
        del buffer[:want]
        return chunk

    def readline(self, channel: int) -> bytes | None:
        buffer = self.buffers[channel]
        while b"\n" not in buffer and not self.closed:
            self._pump()
        if b"\n" not in buffer:
            return None
        line, _, rest = bytes(buffer).partition(b"\n")
        self.buffers[channel] = bytearray(rest)
        return line

    def finish(self) -> int:
        """Read to the end; the command's exit code (from the status channel)."""
        while not self.closed:
            self._pump()
        try:
            status = json.loads(bytes(self.buffers[STATUS]) or b"{}")
        except ValueError:
            return -1
        if status.get("status") == "Success":
            return 0
        for cause in (status.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                return int(cause.get("message", -1))
        return -1

    def close(self) -> None:
        self._close()


EXEC_PERMISSIONS = (Permission("create", "pods", "exec"), Permission("get", "pods", "exec"))


def open_exec(api_client: Any, namespace: str, pod: str, command: list[str], *, action: str) -> ExecSession:
    import kubernetes.client
    from kubernetes.client.exceptions import ApiException
    from kubernetes.stream import stream

    core = kubernetes.client.CoreV1Api(api_client)
    try:
        ws = stream(
            core.connect_get_namespaced_pod_exec,
            pod,
            namespace,
            command=command,
            container=uploads.HELPER_CONTAINER,
            stdin=True,
            stdout=True,
            stderr=True,
            tty=False,
            _preload_content=False,
            binary=True,
        )
    except ApiException as exc:
        # The websocket client reports a refused handshake as status 0 with the HTTP status in
        # its text ("Handshake status 403 Forbidden -+-+- headers -+-+- body").
        found = re.search(r"Handshake status (\d+)", str(exc.reason))
        status = int(found.group(1)) if found else exc.status
        body = str(exc.reason).rsplit("-+-+-", 1)[-1].strip()
        try:
            message = json.loads(body).get("message") or body
        except ValueError:
            message = body or str(exc.reason)
        if status == 403:
            raise TransferForbiddenError(
                f"{uploads.forbidden_message(action, namespace, EXEC_PERMISSIONS, 'it execs a copy program in the pod')}: "
                f"the API server said: {message}"
            ) from None
        raise TransferError(f"{action}: exec in pod {namespace}/{pod} failed: {message}") from None
    return ExecSession.over(ws)


# --- upload -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class UploadOutcome:
    plan: UploadPlan
    sent: bool  # False: the claim held the same file already
    claim_created: bool  # the upload claim is ours: the caller makes the job its owner


def check_rights(api_client: Any, namespace: str, needed: tuple[Permission, ...], action: str, why: str) -> None:
    missing = missing_permissions(api_client, namespace, needed)
    if missing:
        raise TransferForbiddenError(uploads.forbidden_message(action, namespace, missing, why))


def upload(
    api_client: Any,
    namespace: str,
    plan: UploadPlan,
    *,
    job_name: str,
    image: str,
    image_pull_policy: str = "IfNotPresent",
    fs_group: int = pod_security.RUN_AS_GROUP,
    progress: ProgressFactory = default_progress,
    start_timeout_s: float | None = None,
) -> UploadOutcome:
    """Put plan.file into its claim (created first when plan.new_claim says so) through a helper
    pod; verified by size and sha256 in the pod before it is moved into place. On any failure the
    pod is deleted, and so is a claim made here; the caller's file is untouched."""
    import kubernetes.client
    from kubernetes.client.exceptions import ApiException

    start_timeout_s = HELPER_START_TIMEOUT_S if start_timeout_s is None else start_timeout_s
    action = f"uploading {plan.file.path}"
    needed = uploads.needed_permissions(plan)
    check_rights(
        api_client,
        namespace,
        needed,
        action,
        "a short-lived pod receives the file through the exec stream"
        + (" into a claim made for it" if plan.new_claim else ""),
    )
    core = kubernetes.client.CoreV1Api(api_client)
    claim_created = False
    if plan.new_claim is not None:
        manifest = uploads.claim_manifest(plan, job_name)
        try:
            core.create_namespaced_persistent_volume_claim(namespace, manifest)  # type: ignore[arg-type]  # dicts are sent as is
            claim_created = True
        except ApiException as exc:
            if exc.status != 409:
                raise _refused(
                    exc,
                    action,
                    namespace,
                    (Permission("create", "persistentvolumeclaims"),),
                    "it creates a claim for the file",
                ) from None
            claim_created = _reusable_upload_claim(core, plan.target.claim, namespace, job_name)
    try:
        pod = uploads.helper_pod_manifest(
            helper_pod_name(job_name, "upload"),
            claim=plan.target.claim,
            read_only=False,
            image=image,
            image_pull_policy=image_pull_policy,
            fs_group=fs_group,
            purpose="upload",
            job_name=job_name,
        )
        with helper_pod(api_client, namespace, pod, action=action, start_timeout_s=start_timeout_s) as name:
            sent = _send_file(api_client, namespace, name, plan, action, progress)
    except BaseException:
        if claim_created:
            delete_claim(core, plan.target.claim, namespace)
        raise
    return UploadOutcome(plan, sent, claim_created)


def _reusable_upload_claim(core: Any, claim: str, namespace: str, job_name: str) -> bool:
    """A claim of the upload's name exists: ours to reuse only if an earlier upload for this job
    made it and no job owns it yet (a client stopped before it created the job)."""
    existing = core.read_namespaced_persistent_volume_claim(claim, namespace)
    labels = existing.metadata.labels or {}
    if labels.get(uploads.LABEL_TRANSFER_FOR) == job_name and not existing.metadata.owner_references:
        return True
    raise TransferError(
        f"claim {namespace}/{claim} exists already and is not an unowned upload claim for "
        f"{job_name}: choose another job name"
    )


def delete_claim(core: Any, claim: str, namespace: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        core.delete_namespaced_persistent_volume_claim(claim, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise


def _send_file(
    api_client: Any, namespace: str, pod: str, plan: UploadPlan, action: str, progress: ProgressFactory
) -> bool:
    session = open_exec(api_client, namespace, pod, uploads.receive_command(plan), action=action)
    return send_file(session, plan, action, progress, f"{namespace}/{plan.target.claim}")


def send_file(session: ExecSession, plan: UploadPlan, action: str, progress: ProgressFactory, target: str) -> bool:
    """Feed plan.file to RECEIVE_SCRIPT running behind ``session``; True when it was sent, False
    when the claim held it already. Raises TransferError unless the pod stored it verified."""
    from websocket import WebSocketException

    try:
        first = _json_line(session.readline(STDOUT))
        if first.get("state") == "present":
            return False
        if first.get("state") != "send":
            raise TransferError(f"{action}: the pod did not start receiving: {_stderr_tail(session)}")
        digest = hashlib.sha256()
        with (
            open(plan.file.path, "rb") as source,
            progress(f"upload {plan.file.path} -> {target}", plan.file.size) as bar,
        ):
            left = plan.file.size
            while left:
                block = source.read(min(SEND_BLOCK, left))
                if not block:
                    break
                digest.update(block)
                try:
                    session.send(block)
                except (OSError, WebSocketException):  # the program in the pod stopped reading: it says why
                    break
                left -= len(block)
                bar.advance(len(block))
        result = _json_line(session.readline(STDOUT))
        code = session.finish()
    finally:
        session.close()
    if result.get("state") == "failed":
        raise TransferError(f"{action}: the pod could not write the file: {result.get('error')}")
    if left and result.get("state") in (None, "mismatch"):
        raise TransferError(
            f"{action}: the stream broke after {plan.file.size - left} of {plan.file.size} bytes "
            f"(exit {code}); nothing was stored: {_stderr_tail(session)}"
        )
    if left or digest.hexdigest() != plan.file.sha256:
        raise TransferError(
            f"{plan.file.path} changed while it was uploaded (now {plan.file.size - left} bytes, "
            f"sha256 {digest.hexdigest()}); nothing was stored: upload it again"
        )
    if (
        code != 0
        or result.get("state") != "stored"
        or result.get("size") != plan.file.size
        or result.get("sha256") != plan.file.sha256
    ):
        raise TransferError(
            f"{action}: the pod stored nothing (exit {code}, it received {result.get('size')} of "
            f"{plan.file.size} bytes, sha256 {result.get('sha256')}): {_stderr_tail(session)}"
        )
    return True


def _json_line(line: bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(line or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _stderr_tail(session: ExecSession) -> str:
    text = bytes(session.buffers[STDERR]).decode("utf-8", "replace").strip()
    return text[-500:] or "no error output"


def make_owner(api_client: Any, namespace: str, claim: str, job: dict[str, Any]) -> None:
    """The job owns the upload claim from now on (deleted with it)."""
    import kubernetes.client

    kubernetes.client.CoreV1Api(api_client).patch_namespaced_persistent_volume_claim(
        claim, namespace, {"metadata": {"ownerReferences": [uploads.owner_reference(job)]}}
    )


# --- download ---------------------------------------------------------------------------------
def download_directory(
    api_client: Any,
    namespace: str,
    *,
    claim: str,
    directory: str,
    to: Path,
    job_name: str,
    image: str,
    image_pull_policy: str = "IfNotPresent",
    fs_group: int = pod_security.RUN_AS_GROUP,
    progress: ProgressFactory = default_progress,
    start_timeout_s: float | None = None,
) -> list[str]:
    """Copy ``directory`` (relative to ``claim``'s root) to ``to`` on this machine, byte for
    byte: a helper pod mounts the claim read-only and sends a tar stream; every file's size is
    checked against the listing made before and its sha256 against the one computed as it was
    read in the pod. Written into a hidden directory next to ``to`` and renamed to ``to`` only
    when complete; ``to`` must not exist or be an empty directory. Returns the files' paths."""
    start_timeout_s = HELPER_START_TIMEOUT_S if start_timeout_s is None else start_timeout_s
    to = Path(to)
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise FileExistsError(f"{to}: exists and is not an empty directory; nothing is overwritten")
    action = f"downloading {claim}/{directory}"
    needed = uploads.needed_permissions(None)
    check_rights(
        api_client,
        namespace,
        needed,
        action,
        "a short-lived pod mounts the claim read-only and sends the files through the exec stream",
    )
    to.parent.mkdir(parents=True, exist_ok=True)
    partial = to.parent / f".{to.name}.partial-{secrets.token_hex(4)}"
    partial.mkdir()
    try:
        pod = uploads.helper_pod_manifest(
            helper_pod_name(job_name, "download"),
            claim=claim,
            read_only=True,
            image=image,
            image_pull_policy=image_pull_policy,
            fs_group=fs_group,
            purpose="download",
            job_name=job_name,
        )
        with helper_pod(api_client, namespace, pod, action=action, start_timeout_s=start_timeout_s) as name:
            files = _receive_tree(api_client, namespace, name, directory, partial, action, progress)
        if to.exists():
            to.rmdir()
        partial.rename(to)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return files


def _receive_tree(
    api_client: Any, namespace: str, pod: str, directory: str, into: Path, action: str, progress: ProgressFactory
) -> list[str]:
    session = open_exec(api_client, namespace, pod, uploads.send_command(directory), action=action)
    return receive_tree(session, directory, into, action, progress)


def receive_tree(session: ExecSession, directory: str, into: Path, action: str, progress: ProgressFactory) -> list[str]:
    """Write what SEND_SCRIPT sends behind ``session`` under ``into``; the files' paths once
    every listed file arrived with its size and sha256. Raises TransferError otherwise."""
    try:
        header = _json_line(session.readline(STDERR))
        if "files" not in header:
            session.finish()
            raise TransferError(f"{action}: {header.get('error') or _stderr_tail(session)}")
        listed = {str(rel): size for rel, size in header["files"]}
        expected_files = {rel: size for rel, size in listed.items() if size is not None}
        received: dict[str, tuple[int, str]] = {}
        try:
            _extract(
                session, listed, into, received, action, progress(f"download {directory}", sum(expected_files.values()))
            )
        except (tarfile.TarError, EOFError) as error:  # the stream ended early: the pod says why
            session.finish()
            raise TransferError(f"{action}: the stream broke ({error}): {_stderr_tail(session)}") from None
        trailer = _json_line(session.readline(STDERR))
        code = session.finish()
    finally:
        session.close()
    return _verified(action, code, trailer, expected_files, received, session)


def _extract(
    session: ExecSession,
    listed: dict[str, int | None],
    into: Path,
    received: dict[str, tuple[int, str]],
    action: str,
    bar_context: ByteProgress,
) -> None:
    """Write the tar stream's files under ``into``, each hashed as written; only listed entries."""
    with bar_context as bar:
        # ExecSession has read() and close(), all a stream ("r|") uses; typeshed's _Fileobj wants more.
        with tarfile.open(fileobj=session, mode="r|") as archive:  # type: ignore[call-overload]  # see above
            for member in archive:
                received_path = uploads.safe_member_path(member.name)
                if received_path is None or received_path not in listed:
                    raise TransferError(f"{action}: unexpected entry {member.name!r} in the stream")
                target = into / received_path
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise TransferError(f"{action}: {member.name!r} is not a regular file")
                target.parent.mkdir(parents=True, exist_ok=True)
                digest, size = hashlib.sha256(), 0
                source = archive.extractfile(member)
                assert source is not None
                with open(target, "wb") as sink:
                    while block := source.read(READ_BLOCK):
                        sink.write(block)
                        digest.update(block)
                        size += len(block)
                        bar.advance(len(block))
                received[received_path] = (size, digest.hexdigest())
        while session.read(READ_BLOCK):  # the archive's padding
            pass


def _verified(
    action: str,
    code: int,
    trailer: dict[str, Any],
    expected_files: dict[str, int],
    received: dict[str, tuple[int, str]],
    session: ExecSession,
) -> list[str]:
    """The files' paths if every listed file arrived with its size and the pod's sha256."""
    sums = trailer.get("sha256") or {}
    if code != 0 or not sums:
        raise TransferError(f"{action}: the pod's copy program failed (exit {code}): {_stderr_tail(session)}")
    problems = []
    for rel, size in sorted(expected_files.items()):
        got = received.get(rel)
        if got is None:
            problems.append(f"{rel}: missing")
        elif got[0] != size:
            problems.append(f"{rel}: {got[0]} bytes, {size} on the claim")
        elif got[1] != sums.get(rel):
            problems.append(f"{rel}: sha256 {got[1]}, {sums.get(rel)} on the claim")
    if problems:
        raise TransferError(f"{action}: the copy differs from the claim ({'; '.join(problems)}); nothing was kept")
    return sorted(expected_files)


def relative_to_mount(pod_path: str) -> str:
    """A checkpoint's path in the training pods, relative to the checkpoint claim's root."""
    return posixpath.relpath(pod_path, contract.CHECKPOINT_MOUNT_PATH)
