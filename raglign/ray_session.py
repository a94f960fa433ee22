"""A Ray session for a job: connect to a cluster when asked, else start a private local Ray.

The local Ray gets its own temp dir and a bounded object store, so two raglign runs on one
machine never share (or tear down) each other's cluster, and everything it started is stopped
when the job ends. Auth and usage stats are set before Ray is imported by the job.

Unless ``raglign --verbose`` asked for it, Ray's own output does not reach the terminal: it goes
to ``ray.log`` in the job's output directory (said once, when the session starts). That is done
with Ray's own logging set-up, not by filtering text:

* the driver's Ray loggers -- ``ray`` and ``ray.data``, the only ones Ray gives a console
  handler -- write to the file instead of stderr (Ray's INFO lines, Ray Data's execution plans,
  stats and, when stdout is not a terminal, its progress tables);
* Ray Data's interactive progress bars, which draw on the terminal directly, are turned off;
* the output of Ray's worker processes, which Ray forwards to the driver and prints, is written
  to the file instead. Among it: actors' own prints and Ray Train's ``PlacementGroupCleaner``,
  a detached actor that asks the State API every second whether the Train controller is alive
  and logs the WARNING "Failed to query Ray Train Controller actor state" (logger
  ``ray.train.v2._internal.execution.controller.placement_group_cleaner``) each time it cannot
  -- always, on a local Ray without the dashboard, which serves that API (``state_api``).

* transformers' bar of each model load in the driver is turned off;
* what native code writes to the driver's own stderr descriptor -- Ray core's C++ logger,
  which prints its ERROR lines there as well as to its log files -- goes to the file too,
  while Python's ``sys.stderr`` (raglign's bars, warnings and errors) stays on the terminal
  (:func:`native_stderr_to`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raglign import console, storage
from raglign.config import RayConfig

LOG_NAME = "ray.log"


def _quiet_env() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@contextlib.contextmanager
def ray_session(config: RayConfig | None = None, *, address: str | None = None,
                log_dir: str | os.PathLike | None = None,
                state_api: bool = False) -> Iterator[dict]:
    """Yield Ray's cluster resources inside an initialised Ray; shut down only what we started.

    ``state_api``: the local Ray also starts its dashboard (on loopback), which serves Ray's
    State API. Jobs that stop Ray Train runs from outside need it: when Tune stops a trial
    (ASHA), the trial's Train controller dies with it, and only Train V2's
    ``PlacementGroupCleaner`` frees the Train workers' placement group -- after asking the State
    API whether the controller is gone. Without it the group stays reserved to the end of the
    job: an ASHA sweep on 2 CPUs deadlocked after two stopped trials. (The cleaner finds the
    cluster by Ray's address lookup, which fails while another Ray runs on the same machine.)

    ``address`` (or ``config.address``, or ``$RAY_ADDRESS``) connects to an existing cluster;
    otherwise a local Ray is started with its own temp dir under the system temp directory.
    If Ray is already initialised in this process (a test fixture, a notebook, an outer stage
    of the demo), it is reused as it is. Ray's output goes to ``log_dir/ray.log`` (default: a
    temp dir, also when ``log_dir`` is a storage URI) unless :func:`raglign.console.is_verbose`.
    """
    _quiet_env()
    import ray

    config = config or RayConfig()
    address = address or config.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    tmp = None if address else tempfile.mkdtemp(prefix="raglign-ray-")
    if log_dir is not None and storage.is_remote(log_dir):
        log_dir = None  # Ray's log is a local file; a job writing to s3:// keeps it in tmp
    log_path = Path(log_dir or tmp or tempfile.mkdtemp(prefix="raglign-")) / LOG_NAME
    with contextlib.ExitStack() as stack:
        quiet = not console.is_verbose()
        if quiet:
            handler = stack.enter_context(ray_logs_to(log_path))
            print(f"Ray's output: {log_path} (raglign --verbose shows it here)", flush=True)
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(num_cpus=config.num_cpus, num_gpus=config.num_gpus,
                     object_store_memory=config.object_store_memory_mb * 1024 * 1024,
                     _temp_dir=tmp, include_dashboard=state_api,
                     **({"dashboard_host": "127.0.0.1"} if state_api else {}))
        if quiet:  # kept until after the shutdown below, which forwards the last lines
            stack.enter_context(worker_output_to(handler))
            stack.enter_context(native_stderr_to(log_path))
            stack.enter_context(no_model_loading_bars())
        stack.callback(ray.shutdown)
        yield ray.cluster_resources()


@contextlib.contextmanager
def ray_logs_to(path: Path) -> Iterator[logging.FileHandler]:
    """Point the driver's Ray loggers at ``path`` instead of the terminal, and turn off Ray
    Data's terminal progress bars, until the block ends; yields the file's handler.

    Called before ``ray.init`` so that Ray's start-up lines land in the file too. When stdout
    is not a terminal, Ray Data logs its progress tables through its logger instead of
    drawing bars, so they are kept (in the file).
    """
    import ray.data  # configures the "ray.data" logger; it must exist before it is redirected

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)  # what Ray's console handlers show; ray.data logs DEBUG too
    swapped = []
    for name in ("ray", "ray.data"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if _writes_to_terminal(h)]:
            handler.setFormatter(old.formatter)
            logger.removeHandler(old)
            swapped.append((logger, old))
        logger.addHandler(handler)
    data_context = ray.data.DataContext.get_current()
    bars = data_context.enable_progress_bars
    data_context.enable_progress_bars = not sys.stdout.isatty()
    try:
        yield handler
    finally:
        data_context.enable_progress_bars = bars
        for name in ("ray", "ray.data"):
            logging.getLogger(name).removeHandler(handler)
        for logger, old in swapped:
            logger.addHandler(old)
        handler.close()


@contextlib.contextmanager
def worker_output_to(handler: logging.FileHandler) -> Iterator[None]:
    """Write the output of Ray's worker processes to ``handler``'s file instead of printing it.

    Ray forwards worker stdout/stderr to the driver, where its stream dispatcher hands each
    batch of lines to the handlers registered on it; ``ray.init`` registers
    ``ray_print_logs``, which prints them. That one is swapped for a writer to the log file
    (after ``ray.init``, which registers it). As in Ray's own printer, the autoscaler's lines
    are reduced to its events, and progress bars that workers draw with
    ``ray.experimental.tqdm_ray`` (state updates, not text) are still drawn here on the
    terminal. Ray 2.60's dispatcher is internal, hence ray's exact pin in pyproject.toml.

    Ray 2.60 delivers every line of a Ray Train V2 worker twice (seen in its ray.log and in
    the bar states). A repeated state is a harmless redraw, except after the bar's close: Ray's
    bar manager has forgotten the bar by then and draws it anew, left open until the driver
    exits, which then prints it once more. States of a closed bar are therefore dropped.
    """
    import json

    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    from ray._private.worker import filter_autoscaler_events, process_tqdm
    from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

    closed_bars: set[str] = set()

    def draw(line: str) -> None:
        try:
            state = json.loads(line)
            bar, closed = state["uuid"], state["closed"]
        except (ValueError, KeyError, TypeError):  # a garbled line: Ray's own warning says so
            process_tqdm(line)
            return
        if bar in closed_bars:
            return
        if closed:
            closed_bars.add(bar)
        process_tqdm(line)

    def write(batch: dict) -> None:
        prefix = _worker_prefix(batch)
        lines = batch.get("lines", [])
        if batch.get("pid") == "autoscaler":
            lines = filter_autoscaler_events(lines)
        handler.acquire()
        try:
            for line in lines:
                if RAY_TQDM_MAGIC in line:
                    draw(line)
                else:
                    handler.stream.write(prefix + line + "\n")
            handler.flush()
        finally:
            handler.release()

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("raglign_log_file", write)
    try:
        yield
    finally:
        dispatcher.remove_handler("raglign_log_file")


@contextlib.contextmanager
def native_stderr_to(path: Path) -> Iterator[None]:
    """Point this process's file descriptor 2 at ``path``; keep ``sys.stderr`` on the terminal.

    Ray core's C++ logger writes its ERROR lines to the driver's descriptor 2 as well as to its
    own log file, and no Ray setting separates the two (``RAY_BACKEND_LOG_LEVEL`` would drop
    them from the files as well). One of them comes once per job whose actor pools may restart:
    "has constructor arguments in the object store and max_restarts > 0"
    (:func:`actor_pool_map` says why it does not apply to raglign). Python's ``sys.stderr`` is
    re-opened on a duplicate of the original descriptor, so Python code -- raglign's bars and
    messages, warnings, a traceback -- still reaches the terminal. A ``sys.stderr`` that is
    not descriptor 2 (pytest's capture, a notebook) is left as it is.
    """
    try:
        python_on_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last
        python_on_fd2 = False
    sys.stderr.flush()
    terminal = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    before = sys.stderr
    if python_on_fd2:
        sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=before.encoding,
                               errors=before.errors, closefd=False)
    os.dup2(log, 2)
    os.close(log)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        if python_on_fd2:
            sys.stderr.close()  # closefd=False: the descriptor is closed below
            sys.stderr = before
        os.close(terminal)


@contextlib.contextmanager
def no_model_loading_bars() -> Iterator[None]:
    """transformers' "Loading weights" bar, drawn by each model load in the driver (a retriever,
    an evaluation's reranker), off until the block ends: a sub-second bar per load is Ray-log
    material, not a stage's progress. Workers draw theirs into ray.log."""
    from transformers.utils import logging as transformers_logging

    was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            transformers_logging.enable_progress_bar()


def _writes_to_terminal(handler: logging.Handler) -> bool:
    """Ray's console handlers are stream handlers on stderr; its file handlers are not."""
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler,
                                                                         logging.FileHandler)


def _worker_prefix(batch: dict) -> str:
    """Ray's own prefix for a worker's lines: ``(ActorName pid=123)``, or ``(pid=123)``."""
    who = batch.get("actor_name") or batch.get("task_name")
    return f"({who} pid={batch.get('pid')}) " if who else f"(pid={batch.get('pid')}) "


def actor_pool_map(ds, fn: type, actors: int, ray_config: RayConfig, **map_batches_args: Any):
    """``ds.map_batches(fn, ...)`` on a pool of ``actors`` actors that survive a lost actor.

    A pool actor whose process or node dies is restarted up to ``ray_config.actor_restarts``
    times (Ray core re-runs its constructor, on another node if its own is gone), and the calls
    that were running on it are retried up to ``ray_config.task_retries`` times
    (``max_task_retries`` of the actor's methods): Ray Data's actor pool marks the actor as
    restarting, sends it no new work meanwhile, and Ray core resubmits its in-flight calls once
    it is back. A call's output reaches the job only when the call returns, so a retried label
    shard or eval batch is redone whole and never counted twice (tests/test_cluster.py kills
    actors, Train workers and a whole node mid-job). Ray Data's own default is unlimited
    restarts and retries; raglign bounds both (:class:`~raglign.config.RayConfig`).

    Whenever restarts are on, Ray core logs an error once per driver process (its C++
    logger, which :func:`native_stderr_to` keeps off the terminal): "has constructor
    arguments in the object store and max_restarts > 0" (ray-project/ray#57733). The
    arguments it means are Ray Data's own (its map transformer and DataContext, which it puts
    in the object store); raglign's constructor arguments travel inside the transformer, by
    value. Those objects live on the driver's node, so a restart after another node is lost
    finds them (#53727 concerns losing the node that holds them, i.e. the driver's, which
    ends the job anyway).
    Ray 2.60 takes ``max_restarts``/``max_task_retries`` for a pool only among its generic
    remote args, which it deprecates (to be removed in 2.64); that warning is not shown.
    """
    import warnings

    import ray
    from ray.util.annotations import RayDeprecationWarning

    restarts = {"max_restarts": ray_config.actor_restarts}
    if ray_config.actor_restarts != 0:  # as Ray Data: a retry runs on the restarted actor
        restarts["max_task_retries"] = ray_config.task_retries
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RayDeprecationWarning)
        return ds.map_batches(fn, compute=ray.data.ActorPoolStrategy(size=actors),
                              **restarts, **map_batches_args)
