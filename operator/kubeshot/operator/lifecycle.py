"""The CaptureJob lifecycle as pure functions: pod end → outcome, retries, status patches.

The handlers feed these with what they observed and send what comes back to the API server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from kubeshot.api import ExitCode, Failure, FailureReason, Phase, PhaseTiming, ResultSummary
from kubeshot.api.job import CapturePhase

Manifest = dict[str, Any]

# Condition types of a CaptureJob.
ADMITTED = "Admitted"  # the spec is valid and its policy admits it
STARTED = "Started"  # a capture pod exists for the current attempt
FINISHED = "Finished"  # Succeeded or Failed, for good

# Condition type of a ScreenshotPolicy.
READY = "Ready"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: exactly one of result and failure.

    `phases` (what the pod reported of a successful capture) and `started`/`finished` (the
    container's, Unix nanoseconds) are for the trace only: they never change the job's status.
    """

    result: ResultSummary | None = None
    failure: Failure | None = None
    phases: tuple[PhaseTiming, ...] = ()
    started: int | None = None
    finished: int | None = None

    def pod_span(self) -> tuple[int, int] | None:
        """Start and end of the pod's span: its phases, else its container's run; None when
        neither is known."""
        if self.phases:
            return self.phases[0].start_unix_nano, self.phases[-1].end_unix_nano
        if self.started is not None and self.finished is not None:
            return self.started, max(self.started, self.finished)
        return None

    @classmethod
    def failed(cls, reason: FailureReason, message: str) -> Outcome:
        return cls(failure=Failure(reason=reason, message=message[:1024]))


def _container_state(pod: Manifest) -> Manifest | None:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated:
            return dict(terminated)
    return None


def _from_termination_message(text: str) -> Outcome | None:
    try:
        document = json.loads(text)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    try:
        if "result" in document:
            result = ResultSummary.model_validate(document["result"])
            return Outcome(result=result, phases=_phases(document.get("phases")))
        if "failure" in document:
            return Outcome(failure=Failure.model_validate(document["failure"]))
    except ValidationError:
        return None
    return None


_PHASES = TypeAdapter(list[PhaseTiming])


def _phases(value: object) -> tuple[PhaseTiming, ...]:
    """The phases a capture pod reported (it runs hostile pages): bounded and checked by the
    model, in order, and dropped whole when anything is off (they only feed a trace)."""
    if not isinstance(value, list) or len(value) > len(CapturePhase):
        return ()
    try:
        phases = _PHASES.validate_python(value)
    except ValidationError:
        return ()
    ends = [p.end_unix_nano for p in phases]
    starts = [p.start_unix_nano for p in phases]
    if any(start < end for start, end in zip(starts[1:], ends, strict=False)):
        return ()  # overlapping phases were never a capture's
    return tuple(phases)


def _unix_nano(text: object) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        return int(parse_time(text).timestamp()) * 10**9
    except ValueError:
        return None


def with_container_times(outcome: Outcome | None, pod: Manifest) -> Outcome | None:
    """The outcome with its container's start and end, when the pod's state has them."""
    terminated = _container_state(pod)
    if outcome is None or terminated is None:
        return outcome
    return replace(
        outcome,
        started=_unix_nano(terminated.get("startedAt")),
        finished=_unix_nano(terminated.get("finishedAt")),
    )


def pod_outcome(pod: Manifest) -> Outcome | None:
    """The outcome of a finished capture pod; None while it is still pending or running.

    The kubelet's verdicts come first (it killed the pod, so the engine could not report),
    then the engine's own termination message, then its exit code.
    """
    status = pod.get("status") or {}
    phase = status.get("phase")
    terminated = _container_state(pod)
    if status.get("reason") == "DeadlineExceeded":
        return Outcome.failed(
            FailureReason.TIMEOUT, "the capture pod ran past its deadline and was stopped"
        )
    if status.get("reason") in {"Evicted", "Preempting", "NodeLost", "UnexpectedAdmissionError"}:
        message = status.get("message") or status["reason"]
        return Outcome.failed(FailureReason.POD_LOST, f"the capture pod was lost: {message}")
    if terminated is None:
        if phase in {"Succeeded", "Failed"}:
            return Outcome.failed(
                FailureReason.POD_LOST, f"the capture pod {phase.lower()} without a container state"
            )
        return None
    if terminated.get("reason") == "OOMKilled":
        return Outcome.failed(
            FailureReason.MEMORY_LIMIT_EXCEEDED, "the page used more memory than the policy allows"
        )
    code = int(terminated.get("exitCode", ExitCode.INTERNAL))
    reported = _from_termination_message(terminated.get("message") or "")
    if reported is not None:
        if code == ExitCode.OK and reported.result is not None:
            return reported
        if code != ExitCode.OK and reported.failure is not None:
            return reported
    if code == ExitCode.OK:
        return Outcome.failed(
            FailureReason.INTERNAL, "the capture pod exited without reporting a result"
        )
    reason = FailureReason.from_exit_code(code)
    detail = (terminated.get("message") or terminated.get("reason") or "").strip()
    message = f"the capture pod exited with code {code}" + (f": {detail}" if detail else "")
    return Outcome.failed(reason, message)


def backoff_seconds(attempts: int, base: float, limit: float) -> float:
    """Wait before the attempt after `attempts` attempts: base, 2·base, 4·base, ... ≤ limit."""
    return float(min(limit, base * 2 ** max(0, attempts - 1)))


def may_retry(failure: Failure, attempts: int, retries: int) -> bool:
    """Whether another attempt follows: a retriable reason and attempts left."""
    return failure.reason.retriable and attempts <= retries


def set_condition(
    conditions: list[Manifest],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    at: str,
) -> list[Manifest]:
    """conditions with one condition replaced; its transition time kept when status is the same."""
    value = "True" if status else "False"
    previous = next((c for c in conditions if c.get("type") == type_), None)
    changed_at = at
    if previous is not None and previous.get("status") == value:
        changed_at = previous.get("lastTransitionTime") or at
    condition: Manifest = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message[:1024],
        "lastTransitionTime": changed_at,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return [c for c in conditions if c.get("type") != type_] + [condition]


def rejected_status(
    status: Mapping[str, Any], failure: Failure, generation: int | None, at: str
) -> Manifest:
    """A job that can never run: failed at validation, with the reason."""
    conditions = list(status.get("conditions") or [])
    conditions = set_condition(
        conditions, ADMITTED, False, failure.reason.value, failure.message, generation, at
    )
    conditions = set_condition(
        conditions, FINISHED, True, failure.reason.value, failure.message, generation, at
    )
    return {
        "phase": Phase.FAILED.value,
        "observedGeneration": generation,
        "completionTime": at,
        "failure": failure.to_wire(),
        "conditions": conditions,
    }


def queued_status(
    status: Mapping[str, Any],
    generation: int | None,
    at: str,
    message: str = "waiting for a free slot",
    *,
    reason: str = "Queued",
) -> Manifest:
    """Admitted and waiting: for a free slot (reason Queued) or for what `reason` names."""
    conditions = set_condition(
        list(status.get("conditions") or []),
        ADMITTED,
        True,
        "Admitted",
        "the policy admits this capture",
        generation,
        at,
    )
    conditions = set_condition(conditions, STARTED, False, reason, message, generation, at)
    return {"phase": Phase.QUEUED.value, "observedGeneration": generation, "conditions": conditions}


def running_status(
    status: Mapping[str, Any],
    pod: str,
    attempt: int,
    token_sha256: str,
    generation: int | None,
    at: str,
) -> Manifest:
    conditions = set_condition(
        list(status.get("conditions") or []),
        STARTED,
        True,
        "PodCreated",
        f"attempt {attempt}: capture pod {pod}",
        generation,
        at,
    )
    return {
        "phase": Phase.RUNNING.value,
        "observedGeneration": generation,
        "podName": pod,
        "attempts": attempt,
        "startTime": status.get("startTime") or at,
        "uploadTokenSha256": token_sha256,
        "conditions": conditions,
    }


def retry_status(
    status: Mapping[str, Any], failure: Failure, delay: float, generation: int | None, at: str
) -> Manifest:
    message = f"{failure.reason.value}: {failure.message}; retrying in {delay:g}s"
    conditions = set_condition(
        list(status.get("conditions") or []), STARTED, False, "Retrying", message, generation, at
    )
    return {"phase": Phase.QUEUED.value, "observedGeneration": generation, "conditions": conditions}


def finished_status(
    status: Mapping[str, Any], outcome: Outcome, generation: int | None, at: str
) -> Manifest:
    conditions = list(status.get("conditions") or [])
    conditions = set_condition(
        conditions, STARTED, False, "PodFinished", "the capture pod has finished", generation, at
    )
    patch: Manifest = {"observedGeneration": generation, "completionTime": at}
    if outcome.result is not None:
        patch["phase"] = Phase.SUCCEEDED.value
        patch["result"] = outcome.result.to_wire()
        patch["failure"] = None
        conditions = set_condition(
            conditions, FINISHED, True, "Succeeded", "the capture succeeded", generation, at
        )
    else:
        assert outcome.failure is not None
        patch["phase"] = Phase.FAILED.value
        patch["failure"] = outcome.failure.to_wire()
        conditions = set_condition(
            conditions,
            FINISHED,
            True,
            outcome.failure.reason.value,
            outcome.failure.message,
            generation,
            at,
        )
    patch["conditions"] = conditions
    return patch
