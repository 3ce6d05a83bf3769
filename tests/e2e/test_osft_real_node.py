"""OSFT (spec.algorithm: osft, rhai-innovation-mini-trainer in the trainer image) on the REAL node
(the e2e modules' shared stack, tests/e2e/conftest.py: helm-installed operator, both images built
here, the kubelet running the pods): a 2-node OSFT job on the tiny model trains to Succeeded; its status lists
exactly the complete checkpoints on its claim, in mini-trainer's layout (hf_format/samples_N.0);
the last one loads as the original model's class with the original's parameter names and shapes
(OSFT's decomposed weights folded back into dense ones). Then `kubectl delete pod` after the first
epoch: the SIGTERM saves mini-trainer's full state, the job resumes from it (a preemption) and
trains every remaining step once (mini-trainer alone would train none: osft_worker)."""

from __future__ import annotations

import time

import pytest
from realnode_harness import JOB_NS, Jobs, complete_hf_dirs, condition

from devtools.stack import wait_until
from sft_core.checkpoints import (
    HF_FORMAT_DIR,
    metrics_log_path,
    read_completion_marker,
    read_metrics_log,
    read_run_records,
    scan_checkpoints,
)
from sft_models.models import parse_job
from sft_models.naming import statefulset_name

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

NAME = "tiny-osft"


def test_a_two_node_osft_job_trains_to_succeeded_and_its_checkpoint_loads(jobs: Jobs) -> None:
    t = time.monotonic()
    manifest = jobs.manifest(NAME, algorithm="osft", unfreezeRankRatio=0.5, seed=42, lrScheduler="constant_with_warmup")
    assert manifest["spec"]["nnodes"] == 2
    created = jobs.create(manifest)
    job = jobs.follow(NAME)
    status = job.get("status") or {}
    print(f"{NAME} {status.get('phase')} after {time.monotonic() - t:.0f}s")
    assert status.get("phase") == "Succeeded", status
    assert condition(status, "Complete")["status"] == "True"

    root = jobs.claim_dir(created)
    progress = status.get("progress") or {}
    assert progress.get("stage") == "Completed" and progress.get("percent") == 100, progress
    assert progress.get("epoch") == progress.get("numEpochs") == 2, progress
    listed = progress.get("checkpoints") or []
    on_claim = complete_hf_dirs(root)
    # mini-trainer's names, one per epoch end (24 samples an epoch) and the final save
    assert on_claim == {"samples_24.0", "samples_48.0"}, on_claim
    assert {c["name"] for c in listed} == on_claim, (listed, root)
    assert [(c["name"], c["path"], c["samples"], c["epoch"]) for c in listed] == [
        ("samples_24.0", f"{HF_FORMAT_DIR}/samples_24.0", 24, 1),
        ("samples_48.0", f"{HF_FORMAT_DIR}/samples_48.0", 48, 2),
    ]
    assert progress.get("latestCheckpoint") == "samples_48.0"
    assert progress.get("samplesSeen") == progress.get("totalSamples") == 48, progress
    steps = read_metrics_log(metrics_log_path(root)).steps
    assert progress.get("lastLoss") == f"{steps[-1].avg_loss:.4f}", (progress, steps[-1])
    assert not progress.get("resumable")  # no signal, so no full state: nothing to resume

    # The checkpoint is a plain model of the original class, not OSFT's decomposition.
    import torch
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(jobs.assets_dir / "model")
    trained, loading = AutoModelForCausalLM.from_pretrained(
        root / HF_FORMAT_DIR / "samples_48.0", output_loading_info=True
    )
    assert type(trained) is type(original), (type(trained), type(original))
    # Every weight of the class is in the file (none left at a random init). mini-trainer also saves
    # the rotary embedding's original_inv_freq buffer, which the class recomputes: ignored.
    assert (loading["missing_keys"], loading["mismatched_keys"], loading["error_msgs"]) == (set(), set(), [])
    assert loading["unexpected_keys"] <= {"model.rotary_emb.original_inv_freq"}, loading
    before, after = original.state_dict(), trained.state_dict()
    assert {k: tuple(v.shape) for k, v in after.items()} == {k: tuple(v.shape) for k, v in before.items()}
    # OSFT trained the target matrices (attention and MLP projections) ...
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert any("q_proj" in k for k in changed) and any("down_proj" in k for k in changed), changed


def test_kubectl_delete_pod_after_epoch_1_saves_and_the_osft_job_trains_every_remaining_step(jobs: Jobs) -> None:
    name = "osft-preempted"
    epochs, steps_per_epoch = 30, 6  # 24 samples, effective batch 4
    job = jobs.create(
        jobs.manifest(name, algorithm="osft", unfreezeRankRatio=0.5, numEpochs=epochs, fullStateRetention=1)
    )
    pod0 = f"{statefulset_name(parse_job(job))}-0"
    root = jobs.claim_dir(job)

    def past_epoch_1() -> bool:
        steps = read_metrics_log(metrics_log_path(root)).steps
        return bool(steps) and steps[-1].step > steps_per_epoch + 2

    wait_until("the job training past its first epoch", past_epoch_1, timeout_s=600, interval_s=0.2)
    old_uid = jobs.pod(pod0).metadata.uid
    deleted = jobs.stack.kubectl("-n", JOB_NS, "delete", "pod", pod0, "--wait=true", timeout=120)
    assert deleted.returncode == 0, deleted.stderr
    saved = scan_checkpoints(root).latest_full_state
    assert saved is not None and saved.directory == "full_state_checkpoints" and saved.complete, saved
    assert saved.metadata.current_epoch >= 1 and saved.metadata.global_step > steps_per_epoch, saved
    print(f"pod 0 deleted; on-demand state {saved.path} at step {saved.metadata.global_step}")
    wait_until(
        "a new pod 0",
        lambda: (p := jobs.pod(pod0)) is not None and p.metadata.uid != old_uid,
        timeout_s=120,
        interval_s=0.5,
    )

    status = jobs.follow(name).get("status") or {}
    assert status.get("phase") == "Succeeded", status
    assert status.get("restarts") == 0 and status.get("preemptions", 0) >= 1, status
    runs = read_run_records(root)
    resumed = [r for r in runs if r.resumed_from == saved.path]
    assert resumed and resumed[0].start_epoch == saved.metadata.current_epoch, [r.model_dump() for r in runs]
    # Every step once before the save and once after it, in order: nothing skipped, nothing twice.
    after = read_metrics_log(metrics_log_path(root), offset=resumed[0].metrics_log_offset).steps
    assert [s.step for s in after] == list(range(saved.metadata.global_step + 1, epochs * steps_per_epoch + 1))
    assert read_completion_marker(root).samples_seen == 24 * epochs
    progress = status.get("progress") or {}
    assert progress.get("samplesSeen") == 24 * epochs and progress.get("percent") == 100, progress
    assert (progress.get("latestFullState") or {}).get("path") == saved.path, progress
