"""The e2e modules' fixtures: ONE real stack for the whole session (realnode_harness.SharedStack),
under pytest-xdist one for the two workers that run the e2e modules (tests/conftest.py's scopes).

- ``shared_stack``: the session's SharedStack (nothing started until a test asks for the stack;
  released after this worker's last e2e test, and stopped once no worker uses it, so the tiers
  after it have the machine to themselves);
- ``stack``: the started RealStack;
- ``jobs``: the Jobs helper on it (namespace realnode-e2e, or realnode-e2e-<worker> under xdist;
  the tiny model's claim filled once); every job the test made, and its claim, is deleted when the
  test ends, pass or fail.

A module that runs a real node of its own (test_api_reachability_real_node.py) asks for
``real_node_to_myself``: the shared stack is released first and stopped once no worker uses it
(one real node per machine, the machine lock). Those modules run after the others
(tests/conftest.py orders them), so the shared stack starts once per session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from realnode_harness import WORKER, Jobs, SharedStack, delete_jobs_since, job_names

from devtools.realstack import RealStack

_HERE = Path(__file__).parent
_SHARED = pytest.StashKey[SharedStack]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """The shared stack stopped after the last e2e test, not at the end of the session: the tiers
    that run after it (images, integration, training, unit) get the machine's 2 cores."""
    yield
    shared = item.config.stash.get(_SHARED, None)
    if shared is not None and (nextitem is None or _HERE not in Path(nextitem.path).parents):
        shared.release(wait=False)  # stopped by a thread once the other worker is done too


@pytest.fixture(scope="session")
def shared_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedStack]:
    # Under xdist the workers of one run share their base temp dir's parent.
    coord_dir = tmp_path_factory.getbasetemp().parent / "realnode-stack" if WORKER else None
    shared = SharedStack(tmp_path_factory, coord_dir)
    request.config.stash[_SHARED] = shared
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture
def stack(shared_stack: SharedStack) -> RealStack:
    return shared_stack.stack()


@pytest.fixture
def jobs(shared_stack: SharedStack) -> Iterator[Jobs]:
    jobs = shared_stack.jobs()
    before = job_names(jobs)
    yield jobs
    delete_jobs_since(jobs, before)


@pytest.fixture(scope="module")
def real_node_to_myself(shared_stack: SharedStack) -> None:
    """The machine's real node free for this module's own stacks: the shared one released and,
    if this worker started it, stopped once the other worker is done with it (if the other worker
    started it, this module's node waits for the machine lock until it is stopped)."""
    shared_stack.release(wait=True)
