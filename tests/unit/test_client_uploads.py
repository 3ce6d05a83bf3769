"""A data_path on this machine: where it is uploaded, the claim and the helper pod exactly, the
programs the helper pod runs (run here, for real, with the same Python), and the errors naming
the parameter. No cluster."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pss_restricted import restricted_violations

from sft_client.api import transfer, uploads
from sft_client.api.display import ByteProgress, format_bytes
from sft_client.api.download import choose_checkpoint
from sft_client.api.mapping import SFTParameterError
from sft_client.api.paths import ClaimPath, PathProblem
from sft_client.api.results import view_job
from sft_client.api.training_hub import KubernetesSFTBackend
from sft_client.api.uploads import LocalFile, NewClaim, UploadPlan

SHA = hashlib.sha256(b'{"messages": []}\n').hexdigest()
FILE = LocalFile("./data/train set.jsonl", 17, SHA)
TRAINING: dict[str, Any] = dict(
    model_path="pvc://models/tiny",
    ckpt_output_dir="./runs/a",
    num_epochs=1,
    effective_batch_size=2,
    learning_rate=1e-4,
    max_seq_len=64,
    max_tokens_per_gpu=128,
)


def test_which_data_paths_are_files_on_this_machine() -> None:
    assert uploads.local_data_file("train.jsonl") == "train.jsonl"
    assert uploads.local_data_file("./data/train.jsonl") == "./data/train.jsonl"
    assert uploads.local_data_file("../train.jsonl") == "../train.jsonl"
    assert uploads.local_data_file("file:///home/me/my%20data.jsonl") == "/home/me/my data.jsonl"
    assert uploads.local_data_file("file://localhost/tmp/d.jsonl") == "/tmp/d.jsonl"
    for elsewhere in (
        "/data/train.jsonl",
        "pvc://c/d.jsonl",
        "s3://b/k.jsonl",
        "https://h/d.jsonl",
        "hf://datasets/o/r/f.jsonl",
    ):
        assert uploads.local_data_file(elsewhere) is None, elsewhere
    with pytest.raises(PathProblem) as problem:
        uploads.local_data_file("file://laptop/tmp/d.jsonl")
    assert str(problem.value) == "data_path: 'file://laptop/tmp/d.jsonl': write file:///<absolute path on this machine>"


def test_the_upload_goes_to_a_content_addressed_path() -> None:
    assert uploads.upload_path(FILE) == f".sft-uploads/sha256-{SHA[:16]}/train-set.jsonl"
    assert uploads.upload_file_name("C:\\data\\train.jsonl") == "train.jsonl"
    assert uploads.upload_file_name("./..") == "data.jsonl"


def test_claim_size_fits_the_file_with_room_and_at_least_a_gibibyte() -> None:
    assert uploads.upload_claim_size(17) == "1024Mi"
    assert uploads.upload_claim_size(10 * 1024**3) == f"{11264 + 256}Mi"  # 10 GiB + 10 % + 256 MiB
    assert uploads.upload_claim_size(1024**3 - 1) == "1383Mi"


def test_plan_uses_the_existing_checkpoint_claim_else_a_claim_for_the_job() -> None:
    on_checkpoints = uploads.plan_upload(
        FILE, job_name="j", ckpt_output_dir="pvc://ckpts/run1", nnodes=4, storage_class="fast"
    )
    assert on_checkpoints == UploadPlan(FILE, ClaimPath("ckpts", uploads.upload_path(FILE)), None)
    assert on_checkpoints.data_url == f"pvc://ckpts/.sft-uploads/sha256-{SHA[:16]}/train-set.jsonl"
    single = uploads.plan_upload(FILE, job_name="j", ckpt_output_dir="./runs/a", nnodes=None, storage_class=None)
    assert single.new_claim == NewClaim("1024Mi", ("ReadWriteOnce",), None)
    assert single.target.claim == "j-upload"
    several = uploads.plan_upload(FILE, job_name="j", ckpt_output_dir="./runs/a", nnodes=2, storage_class="nfs")
    assert several.new_claim == NewClaim("1024Mi", ("ReadWriteMany",), "nfs")  # written once, read by 2 nodes


def test_claim_manifest_and_owner_reference() -> None:
    plan = uploads.plan_upload(FILE, job_name="tiny", ckpt_output_dir="./runs/a", nnodes=2, storage_class="nfs")
    assert uploads.claim_manifest(plan, "tiny") == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "tiny-upload",
            "labels": {"finetune.dev/transfer": "upload", "finetune.dev/transfer-for": "tiny"},
            "annotations": {"finetune.dev/upload-sha256": SHA, "finetune.dev/upload-source": "train-set.jsonl"},
        },
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "1024Mi"}},
            "storageClassName": "nfs",
        },
    }
    job = {"metadata": {"name": "tiny", "uid": "u-1"}}
    assert uploads.owner_reference(job) == {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "SFTJob",
        "name": "tiny",
        "uid": "u-1",
    }


def test_helper_pods_run_the_restricted_profile_writing_with_the_jobs_group_reading_read_only() -> None:
    writer = uploads.helper_pod_manifest(
        "tiny-upload-abcde",
        claim="tiny-upload",
        read_only=False,
        image="sft-trainer:1",
        image_pull_policy="IfNotPresent",
        fs_group=3000,
        purpose="upload",
        job_name="tiny",
    )
    assert writer == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "tiny-upload-abcde",
            "labels": {"finetune.dev/transfer": "upload", "finetune.dev/transfer-for": "tiny"},
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 5,
            "activeDeadlineSeconds": 21600,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "fsGroup": 3000,
                "fsGroupChangePolicy": "OnRootMismatch",
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "transfer",
                    "image": "sft-trainer:1",
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python3", "-c", uploads.IDLE_SCRIPT],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                        "readOnlyRootFilesystem": True,
                    },
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
                    "volumeMounts": [{"name": "claim", "mountPath": "/sft-transfer"}],
                }
            ],
            "volumes": [{"name": "claim", "persistentVolumeClaim": {"claimName": "tiny-upload"}}],
        },
    }
    reader = uploads.helper_pod_manifest(
        "tiny-download-abcde",
        claim="tiny-checkpoints",
        read_only=True,
        image="sft-trainer:1",
        image_pull_policy="Never",
        fs_group=3000,
        purpose="download",
        job_name="tiny",
    )
    # No fsGroup: the kubelet changes nothing on a claim it mounts for reading.
    assert reader["spec"]["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
        "supplementalGroups": [3000],
    }
    assert reader["spec"]["volumes"] == [
        {"name": "claim", "persistentVolumeClaim": {"claimName": "tiny-checkpoints", "readOnly": True}}
    ]
    assert reader["spec"]["containers"][0]["volumeMounts"] == [
        {"name": "claim", "mountPath": "/sft-transfer", "readOnly": True}
    ]
    # Both pass the restricted Pod Security Standard, rule by rule (pss_restricted.py).
    assert restricted_violations(writer) == restricted_violations(reader) == []


def test_the_rights_a_transfer_needs_and_the_refusal_naming_them() -> None:
    plan = uploads.plan_upload(FILE, job_name="j", ckpt_output_dir="./runs/a", nnodes=1, storage_class=None)
    assert [str(p) for p in uploads.needed_permissions(plan)] == [
        "create pods",
        "get pods",
        "delete pods",
        "create pods/exec",
        "get pods/exec",
        "create persistentvolumeclaims",
        "patch persistentvolumeclaims",
        "delete persistentvolumeclaims",
    ]
    assert [str(p) for p in uploads.needed_permissions(None)] == [
        "create pods",
        "get pods",
        "delete pods",
        "create pods/exec",
        "get pods/exec",
    ]
    assert uploads.forbidden_message("uploading ./d.jsonl", "ml", uploads.needed_permissions(None)[3:], "why") == (
        "uploading ./d.jsonl needs these rights in namespace ml, which you lack: create pods/exec, get pods/exec (why)"
    )


def test_checkpoint_directories_and_tar_member_paths() -> None:
    assert uploads.checkpoint_dir_in_claim("runs/a", "hf_format/samples_8") == "runs/a/hf_format/samples_8"
    assert uploads.checkpoint_dir_in_claim(None, "hf_format/samples_8") == "hf_format/samples_8"
    with pytest.raises(ValueError):
        uploads.checkpoint_dir_in_claim("a", "../../x")
    assert uploads.safe_member_path("config.json") == "config.json"
    assert uploads.safe_member_path("./sub/x") == "sub/x"
    for bad in ("/etc/passwd", "../x", "a/../../x", ""):
        assert uploads.safe_member_path(bad) is None, bad


# --- the helper pod's programs, run here ------------------------------------------------------
def run_script(command: list[str], stdin: bytes, root: Path) -> subprocess.CompletedProcess[bytes]:
    """A helper program with its /sft-transfer paths pointed at ``root``."""
    argv = [sys.executable if arg == "python3" else arg.replace(uploads.HELPER_MOUNT, str(root)) for arg in command]
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=60)


def test_receive_stores_exactly_the_announced_bytes_after_checking_them(tmp_path: Path) -> None:
    data = b'{"messages": []}\n' * 1000
    file = LocalFile("./d.jsonl", len(data), hashlib.sha256(data).hexdigest())
    plan = uploads.plan_upload(file, job_name="j", ckpt_output_dir="./r", nnodes=1, storage_class=None)
    stored = tmp_path / plan.target.path
    # More than announced on stdin (the exec stream cannot close it): the size ends the read.
    out = run_script(uploads.receive_command(plan), data + b"trailing", tmp_path)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line) for line in out.stdout.splitlines()] == [
        {"state": "send"},
        {"state": "stored", "size": len(data), "sha256": file.sha256},
    ]
    assert stored.read_bytes() == data and not Path(f"{stored}.partial").exists()
    # The same file again: found, nothing read.
    out = run_script(uploads.receive_command(plan), b"", tmp_path)
    assert [json.loads(line) for line in out.stdout.splitlines()] == [
        {"state": "present", "size": len(data), "sha256": file.sha256}
    ]
    # Cut short (the client went away): nothing kept, not even the partial file.
    stored.unlink()
    out = run_script(uploads.receive_command(plan), data[:100], tmp_path)
    assert out.returncode == 1
    assert json.loads(out.stdout.splitlines()[-1]) == {
        "state": "mismatch",
        "size": 100,
        "sha256": hashlib.sha256(data[:100]).hexdigest(),
    }
    assert not stored.exists() and not Path(f"{stored}.partial").exists()
    # Other bytes of the same size: refused by the sha256.
    out = run_script(uploads.receive_command(plan), data.upper(), tmp_path)
    assert out.returncode == 1 and json.loads(out.stdout.splitlines()[-1])["state"] == "mismatch"
    assert not stored.exists()


def test_send_streams_a_tar_with_the_listing_first_and_the_digests_after(tmp_path: Path) -> None:
    checkpoint = tmp_path / "runs" / "hf_format" / "samples_8"
    (checkpoint / "sub").mkdir(parents=True)
    files = {"config.json": b"{}", "model.safetensors": os.urandom(300_000), "sub/empty": b""}
    for rel, content in files.items():
        (checkpoint / rel).write_bytes(content)
    out = run_script(uploads.send_command("runs/hf_format/samples_8"), b"", tmp_path)
    assert out.returncode == 0, out.stderr
    listing, sums = [json.loads(line) for line in out.stderr.splitlines()]
    assert listing == {"files": [["sub", None], ["config.json", 2], ["model.safetensors", 300_000], ["sub/empty", 0]]}
    assert sums == {"sha256": {rel: hashlib.sha256(content).hexdigest() for rel, content in files.items()}}
    with tarfile.open(fileobj=io.BytesIO(out.stdout), mode="r|") as archive:
        got = {m.name: archive.extractfile(m).read() if m.isfile() else None for m in archive}  # type: ignore[union-attr]  # a file
    assert got == {"sub": None, **files}
    # Anything but files and directories is refused, not followed.
    (checkpoint / "link").symlink_to("/etc/hostname")
    out = run_script(uploads.send_command("runs/hf_format/samples_8"), b"", tmp_path)
    assert out.returncode == 3 and json.loads(out.stderr) == {"error": "link: not a regular file or directory"}
    out = run_script(uploads.send_command("runs/hf_format/samples_9"), b"", tmp_path)
    assert out.returncode == 3 and json.loads(out.stderr)["error"].endswith("samples_9: no such directory")


# --- sft() with a file on this machine ----------------------------------------------------------
def test_a_local_data_file_becomes_its_upload_path_in_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("train.jsonl").write_bytes(b'{"messages": []}\n')
    backend = KubernetesSFTBackend(name="tiny", namespace="ml", checkpoint_claim_size="1Gi", show_progress=False)
    prepared = backend.prepare({**TRAINING, "data_path": "./train.jsonl", "nnodes": 2})
    assert prepared.upload == UploadPlan(
        LocalFile("./train.jsonl", 17, SHA),
        ClaimPath("tiny-upload", f".sft-uploads/sha256-{SHA[:16]}/train.jsonl"),
        NewClaim("1024Mi", ("ReadWriteMany",), None),
    )
    spec = prepared.manifest["spec"]
    assert spec["dataPath"] == f"/mnt/pvc/tiny-upload/.sft-uploads/sha256-{SHA[:16]}/train.jsonl"
    assert spec["pod"]["volumes"][-1] == {
        "name": "pvc-tiny-upload",
        "persistentVolumeClaim": {"claimName": "tiny-upload", "readOnly": True},
    }
    assert spec["pod"]["volumeMounts"][-1] == {
        "name": "pvc-tiny-upload",
        "mountPath": "/mnt/pvc/tiny-upload",
        "readOnly": True,
    }
    # On an existing checkpoint claim: under its mount, no claim of its own; file:// the same.
    prepared = KubernetesSFTBackend(name="tiny", show_progress=False).prepare(
        {**TRAINING, "data_path": f"file://{tmp_path}/train.jsonl", "ckpt_output_dir": "pvc://ckpts/run1"}
    )
    assert prepared.upload is not None and prepared.upload.new_claim is None
    assert prepared.manifest["spec"]["dataPath"] == f"/checkpoints/.sft-uploads/sha256-{SHA[:16]}/train.jsonl"
    # Nothing local: no upload.
    assert (
        KubernetesSFTBackend(name="t")
        .prepare({**TRAINING, "data_path": "/data/d.jsonl", "ckpt_output_dir": "pvc://ckpts/run1"})
        .upload
        is None
    )


def test_a_missing_local_file_or_other_bad_parameters_are_named_before_the_file_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    backend = KubernetesSFTBackend(name="tiny", checkpoint_claim_size="1Gi", show_progress=False)
    with pytest.raises(SFTParameterError) as raised:
        backend.prepare({**TRAINING, "data_path": "./nope.jsonl"})
    assert str(raised.value) == (
        "invalid sft() parameters: data_path (spec.dataPath): './nope.jsonl': no such file on this machine (a "
        "relative path or file:// is uploaded from here; a path in the pods is absolute, a remote one hf://, s3:// "
        "or https://)"
    )
    Path("d").mkdir()
    with pytest.raises(SFTParameterError) as raised:
        backend.prepare({**TRAINING, "data_path": "d"})
    assert raised.value.parameters[0].message == "'d': is a directory; data_path names one JSONL file"

    Path("train.jsonl").write_bytes(b"{}\n")
    read: list[str] = []
    import sft_client.api.transfer as transfer

    monkeypatch.setattr(transfer, "measure_local_file", lambda path, progress: read.append(path))
    with pytest.raises(SFTParameterError) as raised:
        backend.prepare({**TRAINING, "data_path": "train.jsonl", "num_epochs": 0})
    assert raised.value.params == ["num_epochs"] and read == []


def test_byte_progress_lines_and_sizes() -> None:
    stream = io.StringIO()
    with ByteProgress("upload ./d.jsonl -> ml/c", 3 * 1024**2, stream=stream) as bar:
        bar.advance(3 * 1024**2)
    first, last = stream.getvalue().splitlines()
    assert first == "upload ./d.jsonl -> ml/c (3.0 MiB) ..."
    assert last.startswith("upload ./d.jsonl -> ml/c: 3.0 MiB in ") and last.endswith("/s)")
    assert (format_bytes(17), format_bytes(1536), format_bytes(5 * 1024**4)) == ("17 B", "1.5 KiB", "5.0 TiB")
    quiet = io.StringIO()
    with ByteProgress("x", 1, stream=quiet, enabled=False) as bar:
        bar.advance(1)
    assert quiet.getvalue() == ""


T = "2026-12-07T12:00:00Z"


def test_the_checkpoint_to_download() -> None:
    job = {
        "metadata": {"name": "tiny", "namespace": "ml"},
        "spec": {"checkpoints": {"existingClaim": "c", "path": "runs/a"}},
        "status": {
            "phase": "Succeeded",
            "progress": {
                "checkpoints": [
                    {"name": "samples_8", "path": "hf_format/samples_8", "samples": 8, "time": T},
                    {"name": "samples_16", "path": "hf_format/samples_16", "samples": 16, "time": T},
                ]
            },
        },
    }
    view = view_job(job)
    assert choose_checkpoint(view, None).name == "samples_16"
    assert choose_checkpoint(view, "samples_8").pod_path == "/checkpoints/runs/a/hf_format/samples_8"
    with pytest.raises(LookupError) as missing:
        choose_checkpoint(view, "samples_9")
    assert str(missing.value) == "SFTJob ml/tiny has no complete checkpoint 'samples_9' (it has: samples_8, samples_16)"
    with pytest.raises(LookupError) as none:
        choose_checkpoint(
            view_job({"metadata": {"name": "t", "namespace": "ml"}, "status": {"phase": "Running"}}), None
        )
    assert str(none.value) == "SFTJob ml/t has no complete checkpoint yet (Running)"


# --- both ends of a transfer, the pod's end run here ------------------------------------------
def local_session(command: list[str], root: Path) -> tuple[transfer.ExecSession, subprocess.Popen[bytes]]:
    """An ExecSession to a helper program running here in a subprocess (its /sft-transfer paths at
    ``root``): stdin is the program's, frames are its stdout, then its stderr and exit status, as
    the exec stream's channels carry them."""
    argv = [sys.executable if arg == "python3" else arg.replace(uploads.HELPER_MOUNT, str(root)) for arg in command]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    def frames() -> Iterator[tuple[int, bytes]]:
        while block := os.read(proc.stdout.fileno(), 65536):
            yield transfer.STDOUT, block
        code = proc.wait(timeout=60)
        yield transfer.STDERR, proc.stderr.read()
        status = (
            {"status": "Success"}
            if code == 0
            else {"status": "Failure", "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
        )
        yield transfer.STATUS, json.dumps(status).encode()

    def send(data: bytes) -> None:
        proc.stdin.write(data)
        proc.stdin.flush()

    return transfer.ExecSession(frames(), send, lambda: proc.kill()), proc


def quiet(description: str, total: int | None) -> ByteProgress:
    return ByteProgress(description, total, enabled=False)


def test_an_upload_end_to_end_against_the_pods_program(tmp_path: Path) -> None:
    (tmp_path / "here").mkdir()
    claim = tmp_path / "claim"
    claim.mkdir()
    data = os.urandom(700_000)  # several send blocks
    (tmp_path / "here" / "train.jsonl").write_bytes(data)
    file = LocalFile(str(tmp_path / "here" / "train.jsonl"), len(data), hashlib.sha256(data).hexdigest())
    plan = uploads.plan_upload(file, job_name="j", ckpt_output_dir="pvc://c/r", nnodes=1, storage_class=None)
    session, _ = local_session(uploads.receive_command(plan), claim)
    assert transfer.send_file(session, plan, "uploading", quiet, "ml/c") is True
    assert (claim / plan.target.path).read_bytes() == data
    session, _ = local_session(uploads.receive_command(plan), claim)
    assert transfer.send_file(session, plan, "uploading", quiet, "ml/c") is False  # there already: not sent
    # The file changed after it was measured: refused, nothing stored.
    (claim / plan.target.path).unlink()
    (tmp_path / "here" / "train.jsonl").write_bytes(data[:-1] + b"x")
    session, _ = local_session(uploads.receive_command(plan), claim)
    with pytest.raises(transfer.TransferError) as changed:
        transfer.send_file(session, plan, "uploading", quiet, "ml/c")
    assert str(changed.value).startswith(f"{file.path} changed while it was uploaded")
    assert not any(p.is_file() for p in claim.rglob("*"))


def test_a_download_end_to_end_against_the_pods_program_and_what_a_broken_stream_gives(tmp_path: Path) -> None:
    claim = tmp_path / "claim"
    checkpoint = claim / "run" / "hf_format" / "samples_8"
    checkpoint.mkdir(parents=True)
    files = {"config.json": b'{"a": 1}', "model.safetensors": os.urandom(400_000)}
    for rel, content in files.items():
        (checkpoint / rel).write_bytes(content)
    command = uploads.send_command("run/hf_format/samples_8")
    session, _ = local_session(command, claim)
    assert transfer.receive_tree(session, "d", tmp_path / "out", "downloading", quiet) == sorted(files)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files

    # The same stream with one byte of the weights changed on the way: caught by the sha256.
    out = run_script(command, b"", claim)
    header, trailer = out.stderr.splitlines()
    at = out.stdout.index(files["model.safetensors"][:64]) + 10
    tampered = out.stdout[:at] + bytes([out.stdout[at] ^ 1]) + out.stdout[at + 1 :]

    def replay(stdout: bytes, stderr_after: bytes = trailer + b"\n") -> transfer.ExecSession:
        frames = [
            (transfer.STDERR, header + b"\n"),
            *((transfer.STDOUT, stdout[i : i + 4096]) for i in range(0, len(stdout), 4096)),
            (transfer.STDERR, stderr_after),
            (transfer.STATUS, b'{"status": "Success"}'),
        ]
        return transfer.ExecSession(iter(frames), lambda data: None, lambda: None)

    with pytest.raises(transfer.TransferError) as differs:
        transfer.receive_tree(replay(tampered), "d", tmp_path / "t1", "downloading", quiet)
    assert str(differs.value).startswith("downloading: the copy differs from the claim (model.safetensors: sha256 ")
    # Cut short: the stream broke, and what the pod said is in the error.
    with pytest.raises(transfer.TransferError) as cut:
        transfer.receive_tree(
            replay(out.stdout[:100_000], b"OSError: Input/output error\n"), "d", tmp_path / "t2", "downloading", quiet
        )
    assert str(cut.value).startswith("downloading: the stream broke (")
    assert str(cut.value).endswith("OSError: Input/output error")
