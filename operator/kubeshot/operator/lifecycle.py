"""The CaptureJob lifecycle as pure functions: pod end → outcome, retries, status patches.

The handlers feed these with what they observed and send what comes back to the API server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from kubeshot.api import (
    CaptureJobStatus,
    CaptureOutcome,
    CaptureReport,
    ExitCode,
    Failure,
    FailureReason,
    Phase,
    PhaseTiming,
)
from kubeshot.api.policy import Condition

Manifest = dict[str, Any]

# Condition types of a CaptureJob.
ADMITTED = "Admitted"  # the spec is valid and its policy admits it
STARTED = "Started"  # a capture pod exists for the current attempt
FINISHED = "Finished"  # Succeeded or Failed, for good

# Condition type of a ScreenshotPolicy.
READY = "Ready"


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def now() -> str:
    return datetime.now(UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: exactly one of result and failure.

    `phases` (what the pod reported of a successful capture) and `started`/`finished` (the
    container's, Unix nanoseconds) are for the trace only: they never change the job's status.
    """

    result: CaptureReport | None = None
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


def from_termination_message(text: str) -> Outcome | None:
    """What the capture pod reported (the CaptureOutcome it ended with); None when unreadable."""
    try:
        reported = CaptureOutcome.model_validate_json(text)
    except ValidationError:
        return None
    if reported.failure is not None:
        return Outcome(failure=reported.failure)
    report = reported.report()
    return Outcome(result=report, phases=tuple(report.timings.phases))


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


def pod_outcome(pod: Manifest, now: datetime | None = None) -> Outcome | None:
    """The outcome of a finished capture pod; None while it is still pending or running.

    The kubelet's verdicts come first (it killed the pod, so the engine could not report),
    then the engine's own termination message, then its exit code. With `now`, a pod not ended
    long past its deadline is lost (see `_overdue`).
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
        return None if now is None else _overdue(pod, now)
    if terminated.get("reason") == "OOMKilled":
        return Outcome.failed(
            FailureReason.MEMORY_LIMIT_EXCEEDED, "the page used more memory than the policy allows"
        )
    code = int(terminated.get("exitCode", ExitCode.INTERNAL))
    reported = from_termination_message(terminated.get("message") or "")
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


# How long after its deadline and its termination grace a pod's kubelet may take to report
# having killed it (the kill's status write) before the operator takes the kubelet for gone.
KUBELET_SLACK_SECONDS = 10


def _overdue(pod: Manifest, now: datetime) -> Outcome | None:
    """PodLost for a pod not ended KUBELET_SLACK_SECONDS after its activeDeadlineSeconds and
    termination grace: only its kubelet enforces the deadline, so that kubelet is gone (stopped,
    its node lost) or the pod never reached one (never scheduled). Counted from the pod's
    startTime (the kubelet's own start of the deadline), else its creation."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    began = status.get("startTime") or (pod.get("metadata") or {}).get("creationTimestamp")
    deadline = spec.get("activeDeadlineSeconds")
    if not isinstance(began, str) or not isinstance(deadline, int):
        return None
    late = deadline + int(spec.get("terminationGracePeriodSeconds") or 0) + KUBELET_SLACK_SECONDS
    try:
        if now < parse_time(began) + timedelta(seconds=late):
            return None
    except ValueError:
        return None
    phase = status.get("phase") or "Pending"
    message = f"the capture pod is {phase} {late - deadline}s past its {deadline}s deadline: "
    message += "its node's kubelet does not answer"
    return Outcome.failed(FailureReason.POD_LOST, message)


def backoff_seconds(attempts: int, base: float, limit: float) -> float:
    """Wait before the attempt after `attempts` attempts: base, 2·base, 4·base, ... ≤ limit."""
    return float(min(limit, base * 2 ** max(0, attempts - 1)))


def may_retry(failure: Failure, attempts: int, retries: int) -> bool:
    """Whether another attempt follows: a retriable reason and attempts left."""
    return failure.reason.retriable and attempts <= retries


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    at: str,
) -> list[Condition]:
    """conditions with one condition replaced; its transition time kept when status is the same."""
    value = "True" if status else "False"
    previous = next((c for c in conditions if c.type == type_), None)
    same = previous if previous is not None and previous.status == value else None
    condition = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message[:1024],
        last_transition_time=(same and same.last_transition_time) or at,
        observed_generation=generation,
    )
    return [c for c in conditions if c.type != type_] + [condition]


def rejected_status(
    status: CaptureJobStatus, failure: Failure, generation: int | None, at: str
) -> CaptureJobStatus:
    """A job that can never run: failed at validation, with the reason."""
    reason, message = failure.reason.value, failure.message
    conditions = set_condition(status.conditions, ADMITTED, False, reason, message, generation, at)
    conditions = set_condition(conditions, FINISHED, True, reason, message, generation, at)
    return CaptureJobStatus(
        phase=Phase.FAILED,
        observed_generation=generation,
        completion_time=at,
        failure=failure,
        conditions=conditions,
    )


def queued_status(
    status: CaptureJobStatus,
    generation: int | None,
    at: str,
    message: str = "waiting for a free slot",
    *,
    reason: str = "Queued",
) -> CaptureJobStatus:
    """Admitted and waiting: for a free slot (reason Queued) or for what `reason` names."""
    admitted = "the policy admits this capture"
    conditions = set_condition(
        status.conditions, ADMITTED, True, "Admitted", admitted, generation, at
    )
    conditions = set_condition(conditions, STARTED, False, reason, message, generation, at)
    return CaptureJobStatus(
        phase=Phase.QUEUED, observed_generation=generation, conditions=conditions
    )


def running_status(
    status: CaptureJobStatus,
    pod: str,
    attempt: int,
    token_sha256: str,
    generation: int | None,
    at: str,
) -> CaptureJobStatus:
    message = f"attempt {attempt}: capture pod {pod}"
    conditions = set_condition(
        status.conditions, STARTED, True, "PodCreated", message, generation, at
    )
    return CaptureJobStatus(
        phase=Phase.RUNNING,
        observed_generation=generation,
        pod_name=pod,
        attempts=attempt,
        start_time=status.start_time or at,
        upload_token_sha256=token_sha256,
        conditions=conditions,
        next_attempt_time=None,
    )


def retry_status(
    status: CaptureJobStatus, failure: Failure, delay: float, generation: int | None, at: str
) -> CaptureJobStatus:
    message = f"{failure.reason.value}: {failure.message}; retrying in {delay:g}s"
    conditions = set_condition(
        status.conditions, STARTED, False, "Retrying", message, generation, at
    )
    # Whole seconds, as `at` (cut to the second): rounded up, and one more for the part of the
    # second `at` lost, so that the next attempt never starts before its backoff is over.
    next_attempt = parse_time(at) + timedelta(seconds=math.ceil(delay) + 1)
    return CaptureJobStatus(
        phase=Phase.QUEUED,
        observed_generation=generation,
        conditions=conditions,
        next_attempt_time=next_attempt.strftime(TIME_FORMAT),
    )


def finished_status(
    status: CaptureJobStatus, outcome: Outcome, generation: int | None, at: str
) -> CaptureJobStatus:
    conditions = set_condition(
        status.conditions,
        STARTED,
        False,
        "PodFinished",
        "the capture pod has finished",
        generation,
        at,
    )
    if outcome.failure is None:
        reason, message = "Succeeded", "the capture succeeded"
    else:
        reason, message = outcome.failure.reason.value, outcome.failure.message
    return CaptureJobStatus(
        phase=Phase.SUCCEEDED if outcome.failure is None else Phase.FAILED,
        observed_generation=generation,
        completion_time=at,
        result=outcome.result,
        failure=outcome.failure,
        conditions=set_condition(conditions, FINISHED, True, reason, message, generation, at),
        next_attempt_time=None,
    )
