"""Failures of a transfer, their one line, the retry schedule and keeping secrets out (pure).

A failure is Permanent (no such repo, key or bucket; 401/403; a bad revision; a file that fails
verification twice; no space: retrying cannot help, exit 2) or Transient (timeouts, refused
connections, 5xx, 429: retried with backoff inside the process, then exit 1 so the container
restarts). Either carries the one line: ``<field> (<source>): <what happened>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sft_core import contract

# Bounded retries of a transient failure (each one re-resolves and resumes where it was).
MAX_ATTEMPTS = 5
BACKOFF_FIRST_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 60.0
# Every network call's bound: connecting, and the longest wait for the next bytes.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0

# Variables whose values must never reach a log line, a file or a message.
SECRET_ENV = ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


class TransferFailure(Exception):
    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


class Permanent(TransferFailure):
    exit_code = contract.EXIT_BAD_CONFIG


class Transient(TransferFailure):
    exit_code = contract.EXIT_TRAINING_FAILED


def line(field: str, uri: str, problem: str) -> str:
    """The one line: ``spec.modelPath (hf://org/x@main): 401 Unauthorized: ...``."""
    return f"{field} ({uri}): {problem}"


def backoff_seconds(attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): 2, 4, 8, ... at most 60."""
    return min(BACKOFF_FIRST_SECONDS * 2 ** (attempt - 1), BACKOFF_MAX_SECONDS)


def retry_note(problem: str, attempt: int, delay: float) -> str:
    return f"{problem} (attempt {attempt} of {MAX_ATTEMPTS}; retrying in {delay:g}s)"


def secret_values(env: Mapping[str, str]) -> list[str]:
    # Short values would blank out ordinary words; real keys and tokens are long.
    return sorted({env[k] for k in SECRET_ENV if len(env.get(k) or "") >= 8}, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    for value in secrets:
        text = text.replace(value, "***")
    return text


def secret_name(env: Mapping[str, str], variable: str) -> str | None:
    return (env.get(variable) or "").strip() or None


def hf_credential(env: Mapping[str, str]) -> str:
    """How a message names the Hugging Face token: by its Secret, never by value."""
    name = secret_name(env, contract.ENV_HF_TOKEN_SECRET)
    if not env.get(contract.ENV_HF_TOKEN):
        return "no token was given (spec names no Hugging Face token Secret)"
    return f"the token in Secret {name}" if name else "the token given"


def s3_credential(env: Mapping[str, str]) -> str:
    name = secret_name(env, contract.ENV_S3_SECRET)
    if not env.get("AWS_ACCESS_KEY_ID"):
        return "no credentials were given (spec names no S3 Secret)"
    return f"the credentials in Secret {name}" if name else "the credentials given"
