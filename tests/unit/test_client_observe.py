"""Logs, events and deletion, the pure parts: log lines from chunks, which events are a job's and
in what order, the `events` rows, and what deleting a job does to its checkpoint claim."""

from __future__ import annotations

from typing import Any

from sft_client.api.job_events import JobEvent, event_time, is_pod_of, oldest_first
from sft_client.api.lifecycle import _checkpoint_claim
from sft_client.api.pod_logs import lines_of, pod_name
from sft_client.cli.logs import event_row


def test_log_lines_from_chunks_cut_anywhere() -> None:
    chunks = [b"step 1 lo", b"ss 2.5\nstep 2", b" loss 2.1\n", b"", b"\xc3", b"\xa9t\xc3\xa9\npartial"]
    assert list(lines_of(iter(chunks))) == ["step 1 loss 2.5", "step 2 loss 2.1", "été", "partial"]
    assert list(lines_of(iter([b"a\n\nb\n"]))) == ["a", "", "b"]


def test_node_n_is_pod_job_n_and_only_its_pods_are_the_jobs() -> None:
    assert pod_name("tiny", 3) == "tiny-3"
    assert [is_pod_of("tiny", p) for p in ("tiny-0", "tiny-12", "tiny-extra-0", "tiny-", "tinyx-0", "tiny-0x")] == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]


def _event(name: str, **times: str) -> dict[str, Any]:
    return {
        "involvedObject": {"kind": "Pod", "name": name},
        "type": "Normal",
        "reason": "R",
        "message": " m \n",
        "count": None,
        **times,
    }


def test_events_oldest_first_by_whichever_time_the_writer_set() -> None:
    events = [
        _event("c", lastTimestamp="2026-11-27T10:00:03Z", firstTimestamp="2026-11-27T09:00:00Z"),
        _event("a", eventTime="2026-11-27T10:00:01.500000Z"),  # events.k8s.io-style writers
        _event("d", metadata={"creationTimestamp": "2026-11-27T10:00:04Z"}),
        _event("b", firstTimestamp="2026-11-27T10:00:02Z"),
        _event("sanitized", lastTimestamp="2026-11-27T10:00:02+00:00"),  # the client's own serialization
    ]
    assert [e.object for e in oldest_first(events)] == ["Pod/a", "Pod/b", "Pod/sanitized", "Pod/c", "Pod/d"]
    assert oldest_first(events)[0] == JobEvent("2026-11-27T10:00:01Z", "Normal", "R", "Pod/a", "m", 1)
    assert event_time({}).year == 1


def test_event_rows_say_how_often_an_event_repeated() -> None:
    once = JobEvent("2026-11-27T10:00:00Z", "Warning", "BackOff", "Pod/tiny-0", "restarting [trainer]")
    assert event_row(once) == ["2026-11-27T10:00:00Z", "Warning", "BackOff", "Pod/tiny-0", "restarting [trainer]"]
    again = JobEvent(once.time, once.type, once.reason, once.object, once.message, count=5)
    assert event_row(again)[-1] == "restarting [trainer] (x5)"


SPEC = {
    "modelPath": "/m",
    "dataPath": "/d.jsonl",
    "numEpochs": 1,
    "effectiveBatchSize": 1,
    "learningRate": 1e-4,
    "maxSeqLen": 8,
}


def _job(checkpoints: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "tiny", "namespace": "ml"}, "spec": {**SPEC, "checkpoints": checkpoints, **spec}}


def test_which_claim_a_deletion_concerns_and_whether_the_job_owns_it() -> None:
    assert _checkpoint_claim(_job({"claim": {"size": "1Gi"}})) == ("tiny-checkpoints", False)
    assert _checkpoint_claim(_job({"claim": {"size": "1Gi"}, "deleteWithJob": True})) == ("tiny-checkpoints", True)
    # deleteWithJob never applies to an existing claim (docs/api.md)
    assert _checkpoint_claim(_job({"existingClaim": "mine", "deleteWithJob": True})) == ("mine", False)
    # a spec the operator refused: it created no children, no claim
    assert _checkpoint_claim(_job({"claim": {"size": "1Gi"}}, numEpochs=0)) == (None, False)
