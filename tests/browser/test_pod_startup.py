"""The capture pod's cold start (docs/operator.md, "Cold start"): Playwright's driver starts
while Python imports the engine, a capture imports only what its format needs, and the process
ends without tearing the interpreter down but with everything flushed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kubeshot.api import CaptureOptions, CaptureOutcome, CaptureRequest

# Runs `python -m kubeshot_capture` as the pod does, noting (time.monotonic()) when Playwright's
# driver process is spawned and when the models (kubeshot.api) have finished importing.
TRACED = """
import asyncio, importlib.abc, importlib.machinery, json, runpy, sys, time

marks = open(sys.argv[1], "w", buffering=1)

def mark(what):
    marks.write(json.dumps([what, time.monotonic()]) + "\\n")

class Models(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "kubeshot.api":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        execute = spec.loader.exec_module
        def exec_module(module):
            execute(module)
            mark("models imported")
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Models())
spawn = asyncio.create_subprocess_exec
async def spawned(*args, **kwargs):
    mark("driver spawned")
    return await spawn(*args, **kwargs)
asyncio.create_subprocess_exec = spawned
runpy.run_module("kubeshot_capture", run_name="__main__", alter_sys=True)
"""


def test_the_driver_starts_while_python_imports_the_engine(tmp_path: Path) -> None:
    request = CaptureRequest(options=CaptureOptions(html="<h1>cold start</h1>", format="png"))
    (tmp_path / "request.json").write_text(request.to_json())
    (tmp_path / "traced.py").write_text(TRACED)
    env = {
        **os.environ,
        "KUBESHOT_REQUEST": str(tmp_path / "request.json"),
        "KUBESHOT_TERMINATION_LOG": str(tmp_path / "termination-log"),
        "KUBESHOT_OUTPUT": str(tmp_path / "artifact"),
    }
    done = subprocess.run(
        [sys.executable, str(tmp_path / "traced.py"), str(tmp_path / "marks")],
        env=env,
        capture_output=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    marks = dict(json.loads(line) for line in (tmp_path / "marks").read_text().splitlines())
    assert marks["driver spawned"] < marks["models imported"], marks
    report = CaptureOutcome.model_validate_json((tmp_path / "termination-log").read_text())
    assert report.report().bytes == (tmp_path / "artifact").stat().st_size > 0
    # The process ends with os._exit: its last log line was flushed before.
    assert b"captured png" in done.stdout + done.stderr


def test_a_capture_imports_the_pdf_reader_only_for_a_pdf() -> None:
    script = """
import io, sys
from PIL import Image
from kubeshot.api import CaptureError, Format
from kubeshot_capture import artifacts, pod
png = io.BytesIO()
Image.new("RGB", (2, 2)).save(png, "PNG")
artifacts.verify(png.getvalue(), Format.PNG)
print("pypdf" in sys.modules)
try:
    artifacts.verify(b"%PDF-1.4 but no more", Format.PDF)
except CaptureError:
    pass
print("pypdf" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["False", "True"]
