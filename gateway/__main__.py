"""`python -m gateway`: serves the REST API until SIGTERM.

With `AIOPS_GATEWAY_WORKERS=N` (N > 1) it runs N worker processes that share the port
through SO_REUSEPORT, the way a Node team runs a cluster; the kernel spreads connections
over them. Their metrics are merged through prometheus-client's multiprocess mode.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from types import FrameType

from gateway import worker

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def main() -> None:
    cfg = worker.settings_or_exit()
    if cfg.workers <= 1:
        # SO_REUSEPORT even alone: a rolling restart starts the replacement on the same port
        # before this process stops (services/supervisor.py).
        worker.serve(reuse_port=True)
        return
    # Each worker writes its metrics under this directory; /metrics merges them.
    created = None
    if not os.environ.get(MULTIPROC_ENV):
        created = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="aiops-gateway-metrics-")
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=worker.serve, args=(True,), name=f"gateway-{i}")
        for i in range(cfg.workers)
    ]
    for process in workers:
        process.start()

    def forward(signum: int, frame: FrameType | None) -> None:
        for process in workers:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in workers:
        process.join()
    # A worker that dies takes the gateway down with it, so the supervisor (or Kubernetes)
    # restarts the whole set instead of serving with fewer workers unnoticed.
    if created:
        shutil.rmtree(created, ignore_errors=True)
    codes = [w.exitcode for w in workers]
    sys.exit(0 if all(c == 0 for c in codes) else 1)


if __name__ == "__main__":
    main()
