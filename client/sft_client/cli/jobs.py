"""`sft-operator submit / status / wait / list / download` (also `kubectl sft ...`): SFTJobs from a terminal.

cli.py adds ``commands`` to its app. The work is done by sft_client.api (the same mapping,
validation and waiting as ``sft()``); this is presentation.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml

from sft_client.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    ContextOption,
    JobNameArgument,
    KubeconfigOption,
    NamespaceOption,
    TimeoutOption,
    api,
    cell,
    connect,
    console,
    fail,
    follow,
)
from sft_models.models import InvalidSpecError, parse_job

if TYPE_CHECKING:
    from sft_client.api.results import JobView

commands = typer.Typer()


def parse_value(text: str) -> Any:
    """A --set value: JSON first (so 2e-5 is a number), else YAML (so yes/no, lists, maps)."""
    try:
        return json.loads(text)
    except ValueError:
        return yaml.safe_load(text)


def _key_values(items: list[str] | None, option: str, parse: bool) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"{option} {item!r}: expected KEY=VALUE", EXIT_INVALID)
        found[key.strip()] = parse_value(value) if parse else value
    return found


def _wait_and_print_checkpoints(client: Any, name: str, namespace: str, timeout: float | None) -> None:
    result = follow(client, name, namespace, timeout)
    for checkpoint in result.checkpoints:
        typer.echo(checkpoint.path)


# --- submit -----------------------------------------------------------------------------------


@commands.command()
def submit(
    filename: Annotated[
        Path | None, typer.Option("--filename", "-f", help="An SFTJob manifest (YAML; - for stdin).")
    ] = None,
    model_path: Annotated[
        str | None,
        typer.Option(
            help="hf://org/repo[@rev] (or a bare HF id), s3://bucket/prefix, pvc://claim/path or an "
            "absolute path in the pod."
        ),
    ] = None,
    data_path: Annotated[
        str | None,
        typer.Option(
            "--data-path",
            "--data",
            help="A JSONL file on this machine (relative path or file://: uploaded first), "
            "hf://datasets/org/repo/file, s3://bucket/key, https://host/file, pvc://claim/path, or an "
            "absolute path in the pod.",
        ),
    ] = None,
    ckpt_output_dir: Annotated[
        str | None, typer.Option(help="pvc://claim/path, or a relative path with --checkpoint-claim-size.")
    ] = None,
    num_epochs: Annotated[int | None, typer.Option()] = None,
    effective_batch_size: Annotated[int | None, typer.Option()] = None,
    learning_rate: Annotated[float | None, typer.Option()] = None,
    max_seq_len: Annotated[int | None, typer.Option()] = None,
    max_tokens_per_gpu: Annotated[int | None, typer.Option()] = None,
    algorithm: Annotated[
        str, typer.Option(help="sft (instructlab-training, training_hub sft()) or osft (mini-trainer, osft()).")
    ] = "sft",
    unfreeze_rank_ratio: Annotated[float | None, typer.Option(help="OSFT: required with --algorithm osft.")] = None,
    nnodes: Annotated[int | None, typer.Option()] = None,
    nproc_per_node: Annotated[int | None, typer.Option()] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Any other sft()/osft() parameter or TrainingArgs field: KEY=VALUE (JSON/YAML value)."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Job name; default: sft-<model>-<random>.")] = None,
    namespace: NamespaceOption = None,
    image: Annotated[str | None, typer.Option(help="Trainer image.")] = None,
    device: Annotated[str | None, typer.Option(help="cuda (default) or cpu.")] = None,
    checkpoint_claim_size: Annotated[
        str | None, typer.Option(help="Size of a checkpoint claim for the operator to create, e.g. 500Gi.")
    ] = None,
    checkpoint_storage: Annotated[
        str | None,
        typer.Option(
            help="training_hub's remote checkpoint URI: s3://bucket/prefix exports every checkpoint (full "
            "states too) and restores from it; 'pvc' or unset: the claim only."
        ),
    ] = None,
    storage_class: Annotated[str | None, typer.Option(help="Storage class of that claim (and of an upload's).")] = None,
    hf_token_secret: Annotated[str | None, typer.Option(help="Secret with key HF_TOKEN for hf:// sources.")] = None,
    hf_endpoint: Annotated[str | None, typer.Option(help="A Hugging Face mirror's address.")] = None,
    s3_credentials_secret: Annotated[
        str | None, typer.Option(help="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3://.")
    ] = None,
    s3_endpoint: Annotated[str | None, typer.Option(help="An S3-compatible endpoint (MinIO, Ceph, ...).")] = None,
    s3_region: Annotated[str | None, typer.Option(help="The S3 region.")] = None,
    source_cache_claim: Annotated[str | None, typer.Option(help="A claim caching fetched sources across jobs.")] = None,
    export_uri: Annotated[str | None, typer.Option(help="s3://bucket/prefix: upload each complete checkpoint.")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="Container env: NAME=VALUE (repeat).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the validated manifest; create nothing.")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the job until it ends.")] = False,
    timeout: TimeoutOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> None:
    """Create an SFTJob from a manifest (-f) or from sft()'s (--algorithm osft: osft()'s) parameters as
    flags; validated locally first."""
    flags = {
        "model_path": model_path,
        "data_path": data_path,
        "ckpt_output_dir": ckpt_output_dir,
        "num_epochs": num_epochs,
        "effective_batch_size": effective_batch_size,
        "learning_rate": learning_rate,
        "max_seq_len": max_seq_len,
        "max_tokens_per_gpu": max_tokens_per_gpu,
        "unfreeze_rank_ratio": unfreeze_rank_ratio,
        "nnodes": nnodes,
        "nproc_per_node": nproc_per_node,
        "checkpoint_storage": checkpoint_storage,
    }
    training = {key: value for key, value in flags.items() if value is not None}
    training.update(_key_values(set_, "--set", parse=True))
    remote = {
        "hf_token_secret": hf_token_secret,
        "hf_endpoint": hf_endpoint,
        "s3_credentials_secret": s3_credentials_secret,
        "s3_endpoint": s3_endpoint,
        "s3_region": s3_region,
        "source_cache_claim": source_cache_claim,
        "export_uri": export_uri,
    }
    prepared = None
    if algorithm not in ("sft", "osft"):
        raise fail(f"--algorithm: {algorithm!r}: sft or osft", EXIT_INVALID)
    if filename is not None:
        if (
            training
            or algorithm != "sft"
            or any(v is not None for v in (image, device, checkpoint_claim_size, storage_class, env, *remote.values()))
        ):
            raise fail("give either --filename or training flags, not both", EXIT_INVALID)
        manifest = _manifest_from_file(filename, name, namespace)
    else:
        sft_api = api()
        backend_class = sft_api.KubernetesOSFTBackend if algorithm == "osft" else sft_api.KubernetesSFTBackend
        backend = backend_class(
            name=name,
            namespace=namespace,
            image=image,
            device=device,
            checkpoint_claim_size=checkpoint_claim_size,
            storage_class=storage_class,
            env=_key_values(env, "--env", parse=False) or None,
            **{key: value for key, value in remote.items() if value is not None},
        )
        try:
            prepared = backend.prepare(training)
        except sft_api.SFTParameterError as exc:
            problems = "\n".join(f"  {problem}" for problem in exc.parameters)
            raise fail(f"invalid parameters (nothing was created):\n{problems}", EXIT_INVALID) from None
        manifest = prepared.manifest
    if dry_run:
        if namespace is None and filename is None:
            manifest["metadata"].pop("namespace", None)  # the context's, when created
        typer.echo(yaml.safe_dump(manifest, sort_keys=False), nl=False)
        return
    client, target_namespace = connect(kubeconfig, context, namespace or manifest["metadata"].get("namespace"))
    manifest["metadata"]["namespace"] = target_namespace
    from sft_client.api.transfer import TransferError

    try:
        if prepared is not None and prepared.upload is not None:  # --data ./train.jsonl: uploaded first
            created = api().submit(client, prepared)
        else:
            created = api().create_job(client, manifest)
    except api().SFTJobRefusedError as exc:  # e.g. the admission webhook: the permission or field named
        raise fail(str(exc), EXIT_INVALID) from None
    except TransferError as exc:  # the upload: a right missing, a pod that cannot start, ...
        raise fail(f"{exc} (the job was not created)", EXIT_FAILED) from None
    except KeyboardInterrupt:
        raise fail(
            "interrupted: the upload was stopped and cleaned up; the job was not created", EXIT_INTERRUPTED
        ) from None
    job_name = created["metadata"]["name"]
    typer.echo(f"sftjob.finetune.dev/{job_name} created in {target_namespace}", err=True)
    if wait:
        _wait_and_print_checkpoints(client, job_name, target_namespace, timeout)
    else:
        typer.echo(job_name)


def _manifest_from_file(filename: Path, name: str | None, namespace: str | None) -> dict[str, Any]:
    text = sys.stdin.read() if str(filename) == "-" else filename.read_text()
    body = yaml.safe_load(text)
    if not isinstance(body, dict):
        raise fail(f"{filename}: expected one SFTJob manifest (a YAML mapping)", EXIT_INVALID)
    metadata = dict(body.get("metadata") or {})
    if name is not None:
        metadata["name"] = name
    if namespace is not None:
        metadata["namespace"] = namespace
    if not metadata.get("name"):
        raise fail(f"{filename}: metadata.name is required (or pass --name)", EXIT_INVALID)
    try:
        parse_job({"metadata": metadata, "spec": body.get("spec")})  # the operator's own validation
    except InvalidSpecError as exc:
        raise fail(f"{filename}: invalid SFTJob: {exc}", EXIT_INVALID) from None
    kind, api_version = body.get("kind", "SFTJob"), body.get("apiVersion", "finetune.dev/v1alpha1")
    if (kind, api_version) != ("SFTJob", "finetune.dev/v1alpha1"):
        raise fail(f"{filename}: expected kind SFTJob, apiVersion finetune.dev/v1alpha1", EXIT_INVALID)
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": body["spec"]}


# --- status, wait, list -----------------------------------------------------------------------


def _age(created: str | None, now: datetime | None = None) -> str:
    if not created:
        return ""
    try:
        moment = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return created
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def status_rows(view: JobView) -> list[tuple[str, str]]:
    """The status table's rows (pure): only facts the status has."""
    from sft_client.api.progress_text import epoch_text, samples_text

    rows = [
        ("Job", f"{view.namespace}/{view.name}"),
        ("Phase", view.phase),
        ("Nodes", view.nodes),
        ("Stage", cell(view.stage)),
        ("Epoch", epoch_text(view)),
        ("Samples", samples_text(view)),
        ("Progress", cell(view.percent, "{:.0f}%")),
        ("Loss", cell(view.loss, "{:.4g}")),
        ("Throughput", cell(view.throughput, "{:.3g} samples/s")),
        ("ETA", cell(view.eta)),
        ("Resumes from", cell(view.resumes_from)),
        ("Updated", cell(view.updated)),
        ("Reason", " ".join(filter(None, [view.reason, view.message])) if view.reason or view.message else ""),
    ]
    return [(key, value) for key, value in rows if value]


@commands.command()
def status(
    name: JobNameArgument,
    namespace: NamespaceOption = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table, yaml or json.")] = "table",
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> None:
    """An SFTJob's phase, progress and checkpoints."""
    from rich.table import Table

    client, namespace = connect(kubeconfig, context, namespace)
    try:
        job = api().get_job(client, name, namespace)
    except api().SFTJobNotFoundError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    if output in ("yaml", "json"):
        status_body = job.get("status") or {}
        typer.echo(
            json.dumps(status_body, indent=2) if output == "json" else yaml.safe_dump(status_body, sort_keys=False)
        )
        return
    view = api().view_job(job)
    out = console()
    summary = Table(show_header=False, box=None)
    for key, value in status_rows(view):
        summary.add_row(f"[bold]{key}[/bold]", value)
    out.print(summary)
    if view.checkpoints:
        table = Table(title="Checkpoints", title_justify="left")
        for column in ("Name", "Epoch", "Samples", "Saved", "Path"):
            table.add_column(column)
        for checkpoint in view.checkpoints:
            table.add_row(
                checkpoint.name,
                cell(checkpoint.epoch),
                cell(checkpoint.samples),
                cell(checkpoint.time),
                checkpoint.path,
            )
        out.print(table)
    else:
        out.print("No checkpoints yet.")


@commands.command("wait")
def wait_command(
    name: JobNameArgument,
    namespace: NamespaceOption = None,
    timeout: TimeoutOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> None:
    """Follow an SFTJob until it ends; print its checkpoints. Exit 1 if it Failed; Ctrl-C leaves it running."""
    client, namespace = connect(kubeconfig, context, namespace)
    _wait_and_print_checkpoints(client, name, namespace, timeout)


# `kubectl get sft`'s printer columns (crd.py) with the ETA after the loss.
LIST_COLUMNS = ("NAME", "PHASE", "NODES", "EPOCH", "PROGRESS", "LOSS", "ETA", "LATEST CHECKPOINT", "AGE")


def list_row(view: JobView, now: datetime | None = None) -> list[str]:
    """One `list` line (pure): `kubectl get sft`'s columns plus the ETA (LIST_COLUMNS)."""
    from sft_client.api.progress_text import epoch_text

    latest = view.checkpoints[-1].name if view.checkpoints else ""
    return [
        view.name,
        view.phase,
        view.nodes,
        epoch_text(view),
        cell(view.percent, "{:.0f}%"),
        cell(view.loss, "{:.4g}"),
        cell(view.eta),
        latest,
        _age(view.created, now),
    ]


@commands.command("list")
def list_command(
    namespace: NamespaceOption = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Every namespace.")] = False,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> None:
    """SFTJobs: phase, nodes, epoch, progress, loss, ETA, latest checkpoint, age."""
    from rich.table import Table

    client, namespace = connect(kubeconfig, context, namespace)
    sft_api = api()
    views = [sft_api.view_job(job) for job in sft_api.list_jobs(client, None if all_namespaces else namespace)]
    if not views:
        typer.echo("No SFTJobs" + ("." if all_namespaces else f" in {namespace}."))
        return
    table = Table(box=None, header_style="bold")
    columns = list(LIST_COLUMNS)
    if all_namespaces:
        columns.insert(0, "NAMESPACE")
    for column in columns:
        table.add_column(column)
    for view in views:
        row = list_row(view)
        table.add_row(*([view.namespace] if all_namespaces else []), *row)
    console().print(table)


@commands.command()
def download(
    name: JobNameArgument,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The directory to create (must not exist or be empty).")
    ],
    checkpoint: Annotated[
        str | None, typer.Argument(help="A checkpoint's name (e.g. samples_64); default: the final one.")
    ] = None,
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> None:
    """Copy a complete checkpoint of an SFTJob to this machine, byte for byte (sizes and sha256 checked)."""
    from sft_client.api.download import download_checkpoint
    from sft_client.api.transfer import TransferError

    client, namespace = connect(kubeconfig, context, namespace)
    sft_api = api()
    try:
        job = sft_api.get_job(client, name, namespace)
        download_checkpoint(client, job, output, checkpoint)
    except (sft_api.SFTJobNotFoundError, LookupError, FileExistsError, TransferError) as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    except KeyboardInterrupt:
        raise fail("interrupted: nothing was kept", EXIT_INTERRUPTED) from None
    typer.echo(str(output))
