"""The pod's place in the torchrun job, from the env the StatefulSet gives (PET_*, SFT_POD_NAME)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict

from sft_core import contract

from .errors import ConfigError


class Topology(BaseModel):
    model_config = ConfigDict(frozen=True)

    nnodes: int
    nproc_per_node: int | Literal["gpu"]
    node_rank: int
    rdzv_id: str
    rdzv_host: str
    rdzv_port: int
    # True when PET_RDZV_ENDPOINT was given; else PET_MASTER_ADDR/PORT name the same endpoint.
    via_rdzv_endpoint: bool

    @property
    def endpoint_env(self) -> str:
        return contract.ENV_RDZV_ENDPOINT if self.via_rdzv_endpoint else contract.ENV_MASTER_ADDR

    def torchrun_kwargs(self) -> dict:
        """TorchrunArgs kwargs; exactly one of rdzv_endpoint or master_addr/port (its rule)."""
        common = {
            "nnodes": self.nnodes,
            "nproc_per_node": self.nproc_per_node,
            "node_rank": self.node_rank,
            "rdzv_id": self.rdzv_id,
        }
        if self.via_rdzv_endpoint:
            return {**common, "rdzv_endpoint": f"{self.rdzv_host}:{self.rdzv_port}"}
        return {**common, "master_addr": self.rdzv_host, "master_port": self.rdzv_port}


def _positive_int(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        raise ConfigError(name, "is not set")
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"must be an integer, got {raw!r}") from None
    if value < 1:
        raise ConfigError(name, f"must be >= 1, got {value}")
    return value


def _split_endpoint(name: str, endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(name, f"must be <host>:<port>, got {endpoint!r}")
    return host, int(port)


def topology_from_env(env: Mapping[str, str]) -> Topology:
    nnodes = _positive_int(env, contract.ENV_NNODES)
    raw_nproc = env.get(contract.ENV_NPROC_PER_NODE, "")
    nproc: int | Literal["gpu"] = "gpu" if raw_nproc == "gpu" else _positive_int(env, contract.ENV_NPROC_PER_NODE)
    pod_name = env.get(contract.ENV_POD_NAME, "")
    if not pod_name:
        raise ConfigError(contract.ENV_POD_NAME, "is not set (the pod's metadata.name)")
    try:
        node_rank = contract.node_rank_from_pod_name(pod_name)
    except ValueError as error:
        raise ConfigError(contract.ENV_POD_NAME, str(error)) from None
    if node_rank >= nnodes:
        raise ConfigError(contract.ENV_POD_NAME, f"ordinal {node_rank} is not below {contract.ENV_NNODES}={nnodes}")
    rdzv_id = env.get(contract.ENV_RDZV_ID, "")
    if not rdzv_id:
        raise ConfigError(contract.ENV_RDZV_ID, "is not set")
    endpoint = env.get(contract.ENV_RDZV_ENDPOINT, "")
    if endpoint:
        host, port = _split_endpoint(contract.ENV_RDZV_ENDPOINT, endpoint)
        via_endpoint = True
    else:
        host = env.get(contract.ENV_MASTER_ADDR, "")
        if not host:
            raise ConfigError(contract.ENV_RDZV_ENDPOINT, f"neither it nor {contract.ENV_MASTER_ADDR} is set")
        port = _positive_int(env, contract.ENV_MASTER_PORT)
        via_endpoint = False
    return Topology(
        nnodes=nnodes,
        nproc_per_node=nproc,
        node_rank=node_rank,
        rdzv_id=rdzv_id,
        rdzv_host=host,
        rdzv_port=port,
        via_rdzv_endpoint=via_endpoint,
    )
