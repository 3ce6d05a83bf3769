"""Launcher failures, each carrying the exit code the operator reads (contract.EXIT_*)."""

from __future__ import annotations

from sft_core import contract


class LauncherError(Exception):
    exit_code = contract.EXIT_TRAINING_FAILED

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(LauncherError):
    """Config or environment invalid; the message starts with the field it is about."""

    exit_code = contract.EXIT_BAD_CONFIG

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class PeerUnavailable(LauncherError):
    exit_code = contract.EXIT_PEER_UNAVAILABLE


class TrainingFailed(LauncherError):
    exit_code = contract.EXIT_TRAINING_FAILED


class Preempted(LauncherError):
    """A termination signal arrived while no training process was running: nothing to save."""

    exit_code = contract.EXIT_PREEMPTED
