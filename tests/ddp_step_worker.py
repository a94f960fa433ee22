"""One rank of tests/test_train.py's 2-process gloo check: ``raglign train``'s optimizer steps
under DDP, as the Ray Train loop sets them up (``DDP_OPTIONS``, ``build_optimizer``, clipping,
``zero_grad(set_to_none=True)``), without Ray, so the test times only the arithmetic.

    python tests/ddp_step_worker.py RANK INIT_FILE CONFIG_JSON OUT_PT
"""

from __future__ import annotations

import json
import sys


def main(rank: int, init_file: str, config_json: str, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from raglign.pipeline.train_loop import DDP_OPTIONS
    from raglign.training.batches import (
        epoch_permutation,
        make_batch,
        micro_batch_rows,
        row_sizes,
    )
    from raglign.training.loss import build_loss
    from raglign.training.reranker import build_optimizer, build_reranker, scorer_class
    from raglign.training.tables import load_train_table
    from raglign.training_config import TrainConfig

    torch.set_num_threads(1)
    spec = json.loads(config_json)
    cfg = TrainConfig.model_validate(spec["config"])
    world = cfg.num_workers
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        table, _ = load_train_table(cfg.data, cfg.objective)
        perm = epoch_permutation(table.num_rows, cfg.seed, 0)
        sizes = row_sizes(table)
        reranker = build_reranker(cfg)
        model = DistributedDataParallel(scorer_class()(reranker, cfg.in_batch_negatives),
                                        **DDP_OPTIONS)
        optimizer = build_optimizer(reranker, cfg.lr, cfg.weight_decay)
        loss_fn = build_loss(cfg, torch.device("cpu"))
        losses = []
        for step in range(spec["steps"]):
            batch = make_batch(table, micro_batch_rows(perm, step, cfg, rank, world, 0, sizes))
            loss = loss_fn(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(reranker.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            losses.append(mean.item() / world)
        if rank == 0:
            torch.save({"state": reranker.state_dict(), "losses": losses}, out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
