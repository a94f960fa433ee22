"""A ``raglign train`` checkpoint's files: what a run needs to continue exactly where it stopped.

Every ``checkpoint_every`` steps (and at ``max_steps`` and the end) rank 0 writes the model,
optimizer, scheduler, step and metrics so far, and every rank its RNG state (dropout, Gumbel
noise, RRPO's episodes); Ray Train merges the ranks' files into one directory. Restoring them
continues with the same data order (:mod:`raglign.training.batches`), optimizer state and random
draws, so a resumed run ends with the weights of an uninterrupted one (tests/test_train.py).

Once a run has finished and exported, nothing is left to resume: :func:`slim_checkpoints` removes
the optimizer, schedule and RNG state (two thirds of a checkpoint under AdamW) from the
checkpoints Ray Train kept; their model weights stay for comparison. The directories themselves
stay: Ray Train's run snapshot lists them and refuses a run directory where they are missing.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

from raglign.training_config import TrainConfig

# A checkpoint's files that only continuing the run needs (model.pt, state.json and
# metrics.jsonl stay).
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "rng-rank*.pt")


def save(directory: Path, model, optimizer, scheduler, step: int, cfg: TrainConfig, rank: int,
         history: list[dict]) -> None:
    """Write this rank's part of the checkpoint of ``step`` into ``directory``."""
    import torch

    if rank == 0:
        torch.save(model.state_dict(), directory / "model.pt")
        torch.save(optimizer.state_dict(), directory / "optimizer.pt")
        torch.save(scheduler.state_dict(), directory / "scheduler.pt")
        (directory / "state.json").write_text(json.dumps({"step": step, "seed": cfg.seed}))
        (directory / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    torch.save({"cpu": torch.get_rng_state(), "cuda": cuda}, directory / f"rng-rank{rank}.pt")


def restore(ckpt, model, optimizer, scheduler, rank: int, device) -> tuple[int, list[dict]]:
    """Load a checkpoint into the live objects; returns (step, metrics history).

    A finished run's checkpoints keep only the model (:func:`slim_checkpoints`): there is
    nothing left to train, so the optimizer, schedule and RNG state stay as they are.
    """
    import torch

    with ckpt.as_directory() as d:
        d = Path(d)
        model.load_state_dict(torch.load(d / "model.pt", map_location=device))
        state = json.loads((d / "state.json").read_text())
        history = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()
                   if line.strip()]
        if not (d / "optimizer.pt").exists():
            return int(state["step"]), history
        optimizer.load_state_dict(torch.load(d / "optimizer.pt", map_location=device))
        scheduler.load_state_dict(torch.load(d / "scheduler.pt"))
        rng = d / f"rng-rank{rank}.pt"
        if rng.exists():
            saved = torch.load(rng)
            torch.set_rng_state(saved["cpu"])
            if saved.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(saved["cuda"], device)
        else:  # resumed with more workers than were saved: a fresh, still deterministic stream
            torch.manual_seed(state["seed"] + 7919 * (rank + 1) + state["step"])
    return int(state["step"]), history


def slim_checkpoints(checkpoints: list[Any]) -> int:
    """Remove the :data:`TRAINING_STATE` files of a finished run's checkpoints; bytes freed.

    Works on any storage Ray Train writes to (local, NFS, ``s3://``) through the checkpoint's
    own pyarrow filesystem.
    """
    import pyarrow.fs as pafs

    freed = 0
    for path, fs in {c.path: c.filesystem for c in checkpoints}.items():
        for info in fs.get_file_info(pafs.FileSelector(path)):
            if info.type == pafs.FileType.File and any(
                    fnmatch.fnmatch(info.base_name, p) for p in TRAINING_STATE):
                freed += info.size
                fs.delete_file(info.path)
    return freed
