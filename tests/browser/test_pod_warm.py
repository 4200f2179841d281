"""A warm capture pod (`python -m kubeshot_capture` with KUBESHOT_ASSIGNMENT_URL): Chromium up
before it asks a fake operator for its job, then the same capture and upload as a cold pod, the
outcome POSTed back (the protocol: the operator's /v1/assignments)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kubeshot import logs
from kubeshot.api import CaptureOutcome, CaptureRequest, ScreenshotPolicySpec
from tests.browser.conftest import TestSite
from tests.browser.test_pod import Receiver, request_for
from tests.support import Handler, serving

ASSIGNMENT = "/v1/assignments/ns/shots-warm-abcde"
# The job's log fields, as the operator sends them with the assignment (and one it must drop).
JOB_CONTEXT = {
    "job": "ns/shot",
    "policy": "shots",
    "request_id": "0123456789abcdef0123456789abcdef",
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "key": "not a log field",
}


def chromium_below(pid: int, argument: str = "") -> bool:
    """Whether a Chromium process descends from `pid` (Playwright's driver launches it), with
    `argument` on its command line (`--type=renderer`: a page's renderer, a context's page)."""
    parents: dict[int, tuple[int, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
        parents[int(stat.parent.name)] = (int(rest.split()[1]), name)
    below, found = {pid}, True
    while found:
        found = False
        for child, (parent, _) in parents.items():
            if parent in below and child not in below:
                below.add(child)
                found = True
    return any(
        "chrom" in parents[p][1] and argument in _command_line(p)
        for p in below
        if p in parents and p != pid
    )


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@dataclass
class Operator:
    """Answers the pod's polls with `statuses` in turn (the last one repeated; 0 hangs up without
    an answer), a 200 with `request`; records every request's Authorization and the outcome
    POSTs' bodies."""

    statuses: list[int]
    request: str = ""
    pod: int = 0
    keys: list[str | None] = field(default_factory=list)
    polls: int = 0
    outcomes: list[bytes] = field(default_factory=list)
    content_types: list[str | None] = field(default_factory=list)
    chromium_at_first_poll: bool | None = None
    renderer_at_first_poll: bool | None = None
    url: str = ""


@contextmanager
def operator(statuses: list[int], request: str = "") -> Iterator[Operator]:
    state = Operator(statuses, request)

    class Assignments(Handler):
        def do_GET(self) -> None:
            state.keys.append(self.headers.get("Authorization"))
            if self.path != ASSIGNMENT:
                self.reply(400)
                return
            if state.polls == 0:
                state.chromium_at_first_poll = chromium_below(state.pod)
                state.renderer_at_first_poll = chromium_below(state.pod, "--type=renderer")
            status = state.statuses[min(state.polls, len(state.statuses) - 1)]
            state.polls += 1
            if status == 0:
                self.close_connection = True
            elif status == 200:
                context = {logs.CONTEXT_HEADER: json.dumps(JOB_CONTEXT)}
                self.reply(200, state.request.encode(), "application/json", context)
            elif status == 204:
                self.send_response(204)
                self.end_headers()
            else:
                self.reply(status, b"no", "text/plain")

        def do_POST(self) -> None:
            state.keys.append(self.headers.get("Authorization"))
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path != f"{ASSIGNMENT}/outcome":
                self.reply(400)
                return
            state.outcomes.append(body)
            state.content_types.append(self.headers.get("Content-Type"))
            self.send_response(204)
            self.end_headers()

    with serving(Assignments) as served:
        state.url = served.url(ASSIGNMENT)
        yield state


def run_warm(
    tmp_path: Path, state: Operator, idle: int = 600
) -> tuple[subprocess.CompletedProcess[bytes], str]:
    """Run a warm pod against `state`'s operator until it exits; it and the key it was given."""
    key = secrets.token_urlsafe(32)
    (tmp_path / "key").write_text(key)
    env = {
        **{k: v for k, v in os.environ.items() if k != "KUBESHOT_REQUEST"},
        "KUBESHOT_ASSIGNMENT_URL": state.url,
        "KUBESHOT_POD_KEY": str(tmp_path / "key"),
        "KUBESHOT_WARM_IDLE_SECONDS": str(idle),
        "KUBESHOT_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }
    with subprocess.Popen(
        [sys.executable, "-m", "kubeshot_capture"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: Chromium too ends if it hangs
    ) as pod:
        state.pod = pod.pid
        try:
            stdout, stderr = pod.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(pod.pid, signal.SIGKILL)
            raise
    done = subprocess.CompletedProcess(pod.args, pod.returncode, stdout, stderr)
    assert key.encode() not in stdout + stderr
    return done, key


def test_a_warm_pod_captures_the_job_it_is_assigned(
    tmp_path: Path, site: TestSite, local_policy: ScreenshotPolicySpec
) -> None:
    receiver = Receiver()
    try:
        request = request_for(site.url("/page"), local_policy, receiver.url)
        with operator([503, 0, 503, 204, 200, 204], request) as state:
            done, key = run_warm(tmp_path, state)
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert state.chromium_at_first_poll is True
    assert state.renderer_at_first_poll is True  # its context's page open before it asks
    assert state.polls == 5  # never again after the 200
    assert state.keys == [f"Bearer {key}"] * 6  # five polls and the outcome
    [upload] = receiver.uploads
    termination = (tmp_path / "termination-log").read_text()
    assert [body.decode() for body in state.outcomes] == [termination]
    assert state.content_types == ["application/json"]
    report = CaptureOutcome.model_validate_json(termination).report()
    assert report.bytes == len(upload["body"]) and report.format == "jpeg"
    # Its lines carry the job's fields from the assignment on (a warm pod exists before it).
    lines = [json.loads(line) for line in done.stderr.decode().splitlines() if line.startswith("{")]
    messages = [line["message"] for line in lines]
    assigned = messages.index("assigned a job")
    fields = {k: v for k, v in JOB_CONTEXT.items() if k != "key"}
    assert lines[assigned:] and all(fields.items() <= line.items() for line in lines[assigned:])
    assert not any("job" in line or "key" in line for line in lines[:assigned]), lines
    assert assigned > 0  # it said something before: "asking for a job"


def test_a_refused_pod_exits_internal_without_a_capture(tmp_path: Path, site: TestSite) -> None:
    pages = len(site.requests)
    with operator([401]) as state:
        done, _ = run_warm(tmp_path, state)
    assert done.returncode == 1
    failure = json.loads((tmp_path / "termination-log").read_text())
    assert failure == {"failure": {"reason": "Internal", "message": "assignment refused: HTTP 401"}}
    assert state.polls == 1 and state.outcomes == [] and len(site.requests) == pages


def test_an_idle_warm_pod_exits_quietly(tmp_path: Path) -> None:
    with operator([204]) as state:
        done, _ = run_warm(tmp_path, state, idle=2)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert state.chromium_at_first_poll is True
    assert state.polls > 1 and state.outcomes == []
    assert not (tmp_path / "termination-log").exists()


def test_an_unreadable_assignment_is_reported_as_invalid_spec(tmp_path: Path) -> None:
    with operator([200], '{"options": {"url": "file:///etc/passwd"}}') as state:
        done, _ = run_warm(tmp_path, state)
    assert done.returncode == 2
    termination = (tmp_path / "termination-log").read_text()
    assert json.loads(termination)["failure"]["reason"] == "InvalidSpec"
    assert state.polls == 1 and [body.decode() for body in state.outcomes] == [termination]


def test_a_cold_pod_reports_its_outcome_with_its_jobs_token_before_it_ends(
    tmp_path: Path, site: TestSite, local_policy: ScreenshotPolicySpec
) -> None:
    receiver = Receiver()
    token = secrets.token_urlsafe(32)
    try:
        request = CaptureRequest.model_validate_json(
            request_for(site.url("/page"), local_policy, receiver.url)
        ).model_copy(update={"report_token": token})
        (tmp_path / "request.json").write_text(request.to_json())
        with operator([]) as state:
            env = {
                **os.environ,
                "KUBESHOT_REQUEST": str(tmp_path / "request.json"),
                "KUBESHOT_OUTCOME_URL": state.url + "/outcome",
                "KUBESHOT_TERMINATION_LOG": str(tmp_path / "termination-log"),
            }
            done = subprocess.run(
                [sys.executable, "-m", "kubeshot_capture"],
                env=env,
                capture_output=True,
                timeout=90,
                check=False,
            )
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert state.polls == 0  # a cold pod never asks for a job
    assert state.keys == [f"Bearer {token}"]
    termination = (tmp_path / "termination-log").read_text()
    assert [body.decode() for body in state.outcomes] == [termination]
    assert CaptureOutcome.model_validate_json(termination).report().format == "jpeg"
    assert token.encode() not in done.stdout + done.stderr
