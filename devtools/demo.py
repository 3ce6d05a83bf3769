"""`make demo`: a newcomer's first run, end to end on this machine.

The local control plane, a real node (kubelet + docker, docs/realnode.md), the images
(scripts/build-images.sh) and `helm install` of the chart. Builds a tiny model and data offline
and puts them on a claim (tiny-assets: a root-owned `local` volume, filled as root writes files),
applies examples/sftjob-tiny-cpu.yaml (2 nodes x 1 process, CPU mode; its checkpoints on a claim
of its own, root-owned too: the pod's fsGroup makes it writable), follows the job until Succeeded,
then prints `kubectl get sftjobs` and the checkpoint tree. Everything it started is stopped on the
way out (Ctrl-C included).
"""

from __future__ import annotations

import argparse
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from sft_core import contract

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "sftjob-tiny-cpu.yaml"
DEFAULT_STATE_DIR = REPO_ROOT / ".local" / "demo"
TERMINAL_PHASES = ("Succeeded", "Failed")


def demo_manifest(example: Path = EXAMPLE) -> dict[str, Any]:
    """The example job (its model and data on the claim devtools.realstack.ASSETS_CLAIM)."""
    return yaml.safe_load(example.read_text())


def describe(job: dict[str, Any]) -> str:
    """One line on where a job stands: the Python API's plain progress line, so the demo and
    `sft-operator wait` read the status the same way."""
    from sft_client.api.progress_text import progress_line
    from sft_client.api.results import view_job

    return progress_line(view_job(job))


def follow_job(
    api_client: Any, namespace: str, name: str, timeout_s: float, on_update: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Watch the SFTJob until Succeeded or Failed (or timeout); returns the last object seen."""
    import kubernetes

    custom = kubernetes.client.CustomObjectsApi(api_client)
    deadline = time.monotonic() + timeout_s
    job = custom.get_namespaced_custom_object(contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name)
    on_update(job)
    while (job.get("status") or {}).get("phase") not in TERMINAL_PHASES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"SFTJob {namespace}/{name} not finished after {timeout_s:.0f}s: {describe(job)}")
        watch = kubernetes.watch.Watch()
        for event in watch.stream(
            custom.list_namespaced_custom_object,
            contract.GROUP,
            contract.VERSION,
            namespace,
            contract.PLURAL,
            field_selector=f"metadata.name={name}",
            timeout_seconds=max(1, int(min(remaining, 30))),
        ):
            job = event["object"]
            on_update(job)
            if (job.get("status") or {}).get("phase") in TERMINAL_PHASES:
                watch.stop()
                break
    return job


def sftjobs_table(kubeconfig: Path, namespace: str) -> str:
    """`kubectl get sftjobs` output (the CRD's printer columns)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return "(kubectl not found; `sft-operator status` shows the same)"
    result = subprocess.run(
        [kubectl, "--kubeconfig", str(kubeconfig), "-n", namespace, "get", "sftjobs"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stdout or result.stderr


def tree(root: Path, max_entries: int = 80) -> str:
    """The checkpoint directory, two levels deep under hf_format/ and full_state/."""
    lines = [str(root)]
    count = 0
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if len(rel.parts) > 3:
            continue
        count += 1
        if count > max_entries:
            lines.append("  ...")
            break
        lines.append("  " * len(rel.parts) + rel.parts[-1] + ("/" if path.is_dir() else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the job")
    parser.add_argument(
        "--helm-set", action="append", default=[], metavar="KEY=VALUE", help="an extra --set for the chart (repeatable)"
    )
    args = parser.parse_args(argv)
    return real_main(args)


def real_main(args: argparse.Namespace) -> int:
    """The demo on the real node: the chart's operator pod, the trainer image, the reporter sidecar."""
    from rich.console import Console

    from devtools.realstack import ASSETS_CLAIM, OPERATOR_NS, RealStack
    from devtools.stack import StackError
    from devtools.tiny_model import build_tiny_assets
    from sft_models.models import parse_job
    from sft_models.naming import claim_name, statefulset_name

    console = Console(highlight=False, soft_wrap=True)

    def say(msg: str) -> None:
        console.print(f"[bold cyan]demo[/]: {msg}")

    state_dir = args.state_dir.resolve()
    shutil.rmtree(state_dir, ignore_errors=True)  # each demo starts from nothing
    namespace = "default"
    started = time.monotonic()
    say(f"building a tiny model and data offline in {state_dir / 'assets'}")
    assets_dir = build_tiny_assets(state_dir / "assets").model_dir.parent
    stack = RealStack(state_dir, on_step=say, helm_set=args.helm_set)
    try:
        stack.start()
        import kubernetes

        say(f"claim {ASSETS_CLAIM}: the model and data on a volume, read-only in the job's pods")
        stack.fill_claim(namespace, ASSETS_CLAIM, assets_dir)
        manifest = demo_manifest()
        manifest["spec"]["pod"]["image"] = stack.images["SFT_TRAINER_IMAGE"]
        # Two pods and their reporters on a small machine: half a core each.
        manifest["spec"]["pod"]["resources"] = {"requests": {"cpu": "500m", "memory": "1Gi"}}
        name = manifest["metadata"]["name"]
        pod0 = f"{statefulset_name(parse_job(manifest))}-0"
        custom = kubernetes.client.CustomObjectsApi(stack.api_client())
        say(
            f"kubectl apply -f {EXAMPLE.relative_to(REPO_ROOT)}   (2 nodes x 1 process, CPU, "
            f"image {stack.images['SFT_TRAINER_IMAGE']})"
        )
        custom.create_namespaced_custom_object(contract.GROUP, contract.VERSION, namespace, contract.PLURAL, manifest)
        last, logs = [""], [""]

        def on_update(job: dict[str, Any]) -> None:
            line = describe(job)
            if line != last[0]:
                last[0] = line
                console.print(f"  [dim]{time.strftime('%H:%M:%S')}[/] {line}")
            out = stack.kubectl(
                "-n", namespace, "logs", pod0, "-c", contract.TRAINER_CONTAINER, "--tail=15", timeout=30
            )
            if out.returncode == 0 and out.stdout.strip():
                logs[0] = out.stdout

        job = follow_job(stack.api_client(), namespace, name, args.timeout, on_update)
        phase = (job.get("status") or {}).get("phase")
        console.print()
        console.print("[bold]$ kubectl get sftjobs[/]")
        console.print(sftjobs_table(stack.kubeconfig, namespace), markup=False)
        console.print(f"[bold]$ kubectl logs {pod0} -c {contract.TRAINER_CONTAINER} --tail=15[/]  (last seen)")
        console.print(logs[0] or "(none)", markup=False)
        root = stack.claim_dir(namespace, claim_name(parse_job(manifest)))
        owner = root.stat()
        console.print(
            f"[bold]checkpoints[/] (the claim's directory on this machine; made root's 0755, now "
            f"{owner.st_uid}:{owner.st_gid} {stat.filemode(owner.st_mode)} through the pod's fsGroup):"
        )
        console.print(tree(root), markup=False)
        if phase != "Succeeded":
            console.print(f"[bold red]job {phase}[/]: {describe(job)}")
            console.print(stack.operator_log(), markup=False)
            return 1
        say(
            f"[bold green]Succeeded[/] in {time.monotonic() - started:.0f}s: a tiny model was fine-tuned in "
            f"2 pods of the trainer image on a real kubelet; the operator ran as a pod in {OPERATOR_NS}"
        )
        return 0
    except (StackError, TimeoutError) as exc:
        console.print(f"[bold red]demo failed[/]: {exc}")
        if stack.operator_pod:
            console.print(stack.operator_log(), markup=False)
        console.print(f"node logs: {state_dir / 'node' / 'logs'}")
        return 1
    except KeyboardInterrupt:
        console.print("interrupted: stopping everything")
        return 130
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
