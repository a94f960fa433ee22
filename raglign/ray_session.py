"""A Ray session for a job: connect to a cluster when asked, else start a private local Ray.

The local Ray gets its own temp dir and a bounded object store, so two raglign runs on one
machine never share (or tear down) each other's cluster, and everything it started is stopped
when the job ends. Auth and usage stats are set before Ray is imported by the job.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from raglign.config import RayConfig


def _quiet_env() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@contextlib.contextmanager
def ray_session(config: RayConfig | None = None, *, address: str | None = None) -> Iterator[dict]:
    """Yield Ray's cluster resources inside an initialised Ray; shut down only what we started.

    ``address`` (or ``config.address``, or ``$RAY_ADDRESS``) connects to an existing cluster;
    otherwise a local Ray is started with its own temp dir under the system temp directory.
    If Ray is already initialised in this process (a test fixture, a notebook), it is reused.
    """
    _quiet_env()
    import ray

    config = config or RayConfig()
    address = address or config.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        tmp = tempfile.mkdtemp(prefix="raglign-ray-")
        ray.init(
            num_cpus=config.num_cpus,
            num_gpus=config.num_gpus,
            object_store_memory=config.object_store_memory_mb * 1024 * 1024,
            _temp_dir=tmp,
            include_dashboard=False,
        )
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()
