"""`python -m kubeshot_capture`: the capture pod's process; kubeshot_capture.pod does the work.

A cold start, as measured in docs/operator.md ("Cold start"): Playwright's driver, a node
process, takes about as long to start as Python takes to import the engine and its models. So
the driver starts first, from here (only asyncio and Playwright imported), and the imports run
in a thread meanwhile. The process then exits without tearing the interpreter down: freeing
every object of a process that is about to end took ~0.15 s, and nothing is left to do once the
logs and the standard streams are flushed (the artifact, the termination log and the upload are
done; Chromium and the driver have exited).
"""

import asyncio
import importlib
import logging
import os
import sys

from playwright.async_api import async_playwright


async def _main() -> int:
    driver = asyncio.ensure_future(async_playwright().start())
    pod = await asyncio.to_thread(importlib.import_module, "kubeshot_capture.pod")
    code: int = await pod.main(driver)
    return code


code = asyncio.run(_main())
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
