"""Where a ``raglign train`` step's time goes with 1 and 2 DDP processes (gloo, CPU).

The step of ``bench_vs_sentence_transformers.py`` (its HotpotQA groups, its saved MiniLM-L6
cross-encoder, max length 256, 4 groups of 7 pairs per step, 1 torch thread per process) taken
as the Ray Train loop takes it, without Ray, in phases: data (``make_batch``), forward (the
loss), backward (DDP's bucketed all-reduce runs inside it), clip, optimizer (AdamW + schedule),
zero_grad, and the loss all-reduce the loop's report starts with. Each phase's CPU seconds of the
process (``time.process_time``: on a shared machine wall time measures the other tenants) and
wall seconds, averaged over steps 2..N.

Setups: ``before`` = DDP's defaults and the for-loop ``torch.optim.AdamW``; ``after`` = the
loop's (``train_loop.DDP_OPTIONS``: gradients as bucket views, ``build_optimizer``: fused AdamW).
Every run's losses and weights are compared with the 1-process ``before`` run.

It also counts the padded tokens each rank's forward computes (length-sorted pieces under the
CPU token budget, as ``forward_scores`` cuts them): a DDP step waits for the rank with the
most, so sum over steps of the 1-process tokens / sum of the larger rank's is the speed-up that
the data split leaves possible before any overhead; counted for the step's rows dealt to the
ranks by size (``batches.balanced_slots``, as the loop does) and in contiguous slices.

    python benchmarks/bench_ddp_phases.py --out /tmp/ddp_phases
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PHASES = ["data", "forward", "backward", "clip", "optimizer", "zero_grad", "loss_all_reduce"]


def worker(rank: int, world: int, setup: str, spec: dict, queue) -> None:
    import torch

    torch.set_num_threads(1)
    import torch.distributed as dist
    from transformers import get_linear_schedule_with_warmup

    from bench_vs_sentence_transformers import train_config
    from raglign.pipeline.train_loop import DDP_OPTIONS
    from raglign.training.batches import (
        epoch_permutation,
        make_batch,
        micro_batch_rows,
        row_sizes,
    )
    from raglign.training.loss import build_loss
    from raglign.training.reranker import (
        build_optimizer,
        build_reranker,
        param_groups,
        scorer_class,
    )
    from raglign.training.tables import load_train_table

    args = argparse.Namespace(**spec["args"])
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{spec['init']}-{setup}-{world}",
                                rank=rank, world_size=world)
    cfg = train_config(spec["data"], spec["tmp"], spec["model"], args, world)
    table, _ = load_train_table(cfg.data, "infonce")
    device = torch.device("cpu")
    compute_loss = build_loss(cfg, device)
    reranker = build_reranker(cfg, device)
    model = scorer_class()(reranker, False)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, **(DDP_OPTIONS if setup == "after" else {}))
    optimizer = (build_optimizer(reranker, cfg.lr, cfg.weight_decay) if setup == "after" else
                 torch.optim.AdamW(param_groups(reranker, cfg.weight_decay), lr=cfg.lr,
                                   foreach=False))
    total = table.num_rows // cfg.batch_size
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total),
                                                total)
    perm = epoch_permutation(table.num_rows, cfg.seed, 0)
    sizes = row_sizes(table)
    cpu = {p: [] for p in PHASES}
    wall = {p: [] for p in PHASES}
    losses = []
    for step in range(args.steps):
        marks = [(time.process_time(), time.perf_counter())]

        def mark():
            marks.append((time.process_time(), time.perf_counter()))

        batch = make_batch(table, micro_batch_rows(perm, step, cfg, rank, world, 0, sizes))
        mark()
        loss = compute_loss(model, batch)
        mark()
        loss.backward()
        mark()
        torch.nn.utils.clip_grad_norm_(reranker.parameters(), cfg.max_grad_norm)
        mark()
        optimizer.step()
        scheduler.step()
        mark()
        optimizer.zero_grad(set_to_none=True)
        mark()
        stats = torch.tensor([loss.item()], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(stats)
        mark()
        losses.append(stats.item() / world)
        for phase, (c0, w0), (c1, w1) in zip(PHASES, marks, marks[1:]):
            cpu[phase].append(c1 - c0)
            wall[phase].append(w1 - w0)
    if rank == 0:
        torch.save([p.detach() for p in reranker.parameters()], spec["params"])
    queue.put({"rank": rank, "cpu": cpu, "wall": wall, "losses": losses,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    if world > 1:
        dist.destroy_process_group()


def run(world: int, setup: str, spec: dict) -> dict:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    load0 = os.getloadavg()[0]
    procs = [ctx.Process(target=worker, args=(r, world, setup, spec, queue))
             for r in range(world)]
    for p in procs:
        p.start()
    ranks = sorted((queue.get() for _ in procs), key=lambda r: r["rank"])
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a {setup} rank of {world} exited with {p.exitcode}")
    out = {"world": world, "setup": setup, "losses": ranks[0]["losses"],
           "load": (load0 + os.getloadavg()[0]) / 2, "ranks": []}
    for r in ranks:
        row = {"peak_rss_mib": round(r["peak_rss_mib"])}
        for kind in ("cpu", "wall"):
            row[kind] = {p: sum(v[1:]) / len(v[1:]) for p, v in r[kind].items()}
            row[kind]["step"] = sum(row[kind].values())
        row["forward_backward_cpu"] = [f + b for f, b in zip(r["cpu"]["forward"],
                                                             r["cpu"]["backward"])][1:]
        out["ranks"].append(row)
    return out


def padded_tokens(spec: dict) -> dict:
    """Per step: the 1-process forward's padded tokens and each of 2 ranks', with the step's
    rows dealt to the ranks by size (as the loop does) and in contiguous slices (as before)."""
    from transformers import AutoTokenizer

    from bench_vs_sentence_transformers import train_config
    from raglign.batching import ENCODER_TOKEN_BUDGET, length_batches
    from raglign.training.batches import (
        epoch_permutation,
        make_batch,
        micro_batch_rows,
        row_sizes,
    )
    from raglign.training.tables import load_train_table

    args = argparse.Namespace(**spec["args"])
    tok = AutoTokenizer.from_pretrained(spec["model"])
    table, _ = load_train_table(spec["data"], "infonce")
    perm = epoch_permutation(table.num_rows, args.seed, 0)
    out = {}
    for deal, sizes in (("dealt", row_sizes(table)), ("contiguous", None)):
        steps_of = {}
        for world in (1, 2):
            cfg = train_config(spec["data"], spec["tmp"], spec["model"], args, world)
            steps = []
            for step in range(table.num_rows // cfg.batch_size):
                per_rank = []
                for rank in range(world):
                    b = make_batch(table, micro_batch_rows(perm, step, cfg, rank, world, 0,
                                                           sizes))
                    lengths = [len(ids) for ids in tok(
                        [q for q in b.queries for _ in b.docs[0]],
                        [d for g in b.docs for d in g],
                        truncation="longest_first", max_length=cfg.max_length)["input_ids"]]
                    per_rank.append(sum(len(c) * lengths[c[0]] for c in length_batches(
                        lengths, len(lengths), ENCODER_TOKEN_BUDGET["cpu"])))
                steps.append(per_rank)
            steps_of[world] = steps
        one = sum(s[0] for s in steps_of[1])
        two = steps_of[2]
        out[deal] = {"one_process": [s[0] for s in steps_of[1]], "two_ranks": two,
                     "ceiling": one / sum(max(s) for s in two),
                     "imbalance": sum(max(s) for s in two) / (sum(map(sum, two)) / 2) - 1,
                     "extra_padding": sum(map(sum, two)) / one - 1}
    return out


def markdown(report: dict) -> str:
    runs = report["runs"]
    head = "| phase | " + " | ".join(
        f"{r['world']} proc, {r['setup']}" + (" (rank 0 / 1)" if r["world"] > 1 else "")
        for r in runs) + " |"
    lines = [head, "|---|" + "---:|" * len(runs)]
    for phase in [*PHASES, "step"]:
        cells = [" / ".join(f"{rk['cpu'][phase]:.3f}" for rk in r["ranks"]) for r in runs]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    lines.append("| peak RSS MiB | " + " | ".join(
        " / ".join(str(rk["peak_rss_mib"]) for rk in r["ranks"]) for r in runs) + " |")
    lines.append("| max loss diff vs 1 proc before | " + " | ".join(
        f"{r['max_loss_diff']:.1e}" for r in runs) + " |")
    lines.append("| max weight diff | " + " | ".join(
        f"{r['max_weight_diff']:.1e}" for r in runs) + " |")
    lines.append("| load avg | " + " | ".join(f"{r['load']:.1f}" for r in runs) + " |")
    for r in runs:
        one = next((o for o in runs if o["world"] == 1 and o["setup"] == r["setup"]), None)
        if r["world"] == 2 and one is not None:
            slower = sum(map(max, zip(*(rk["forward_backward_cpu"] for rk in r["ranks"]))))
            mean = sum(sum(rk["forward_backward_cpu"]) for rk in r["ranks"]) / 2
            ratio = sum(one["ranks"][0]["forward_backward_cpu"]) / slower
            lines.append(f"\n{r['setup']}: forward+backward CPU of 1 process over the slower "
                         f"rank's, step by step: {ratio:.2f}x (the slower rank "
                         f"{slower / mean - 1:.1%} above the ranks' mean).")
    for deal, t in report["tokens"].items():
        lines += ["", f"Padded tokens, rows {deal}: ceiling {t['ceiling']:.2f}x (2 ranks: the "
                      f"larger rank {t['imbalance']:.1%} above the mean; "
                      f"{t['extra_padding']:.1%} more padded tokens in all than one process)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=6, help="steps timed: 2..N")
    ap.add_argument("--runs", default="1:before,2:before,2:after,1:after",
                    help="world:setup pairs, setup 'before' or 'after'")
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--data", default=None, help="HotpotQA JSON (default: the shared data's)")
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be >= 2 (step 1 is not timed)")
    if "1:before" not in args.runs.split(","):
        ap.error("--runs must include 1:before, the run the others are compared with")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from bench_vs_sentence_transformers import DATA, hotpotqa_groups, save_cross_encoder

    bench = {"max_length": 256, "batch_size": 4, "lr": 6e-5, "seed": 42, "threads": 1, "m": 6,
             "steps": args.steps}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "cpus": os.cpu_count(), "torch": torch.__version__, "runs": []}
    with tempfile.TemporaryDirectory(prefix="rg-ddp-") as tmp_name:
        tmp = Path(tmp_name)
        groups, _ = hotpotqa_groups(Path(args.data or DATA / "hotpotqa" / "hotpotqa_train.json"),
                                    bench["m"])
        n = args.steps * bench["batch_size"]
        if len(groups) < n:
            ap.error(f"{len(groups)} groups, fewer than steps x 4 = {n}")
        (tmp / "groups").mkdir()
        pq.write_table(pa.Table.from_pylist(groups[:n]), tmp / "groups" / "part-00000.parquet")
        torch.set_num_threads(1)
        model = save_cross_encoder(tmp / "model", args.model, bench["max_length"], bench["seed"])
        spec = {"args": bench, "data": str(tmp / "groups"), "model": str(model),
                "tmp": str(tmp / "out"), "init": str(tmp / "pg")}
        report["tokens"] = padded_tokens(spec)
        weights = {}
        for item in args.runs.split(","):
            world, setup = item.split(":")
            if setup not in ("before", "after") or world not in ("1", "2"):
                ap.error(f"--runs: {item!r} is not 1|2:before|after")
            spec["params"] = str(tmp / f"params-{item.replace(':', '-')}.pt")
            r = run(int(world), setup, spec)
            weights[item] = torch.cat([p.flatten() for p in torch.load(spec["params"])])
            report["runs"].append(r)
            print(f"{world} process(es), {setup}: {r['ranks'][0]['cpu']['step']:.3f} CPU-s per "
                  f"step (rank 0), losses {' '.join(f'{x:.6f}' for x in r['losses'])}",
                  flush=True)
    ref = next(r for r in report["runs"] if (r["world"], r["setup"]) == (1, "before"))
    for r, w in zip(report["runs"], weights.values()):
        r["max_loss_diff"] = max(abs(a - b) for a, b in zip(r["losses"], ref["losses"]))
        r["max_weight_diff"] = (w - weights["1:before"]).abs().max().item()
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(markdown(report))
    print(markdown(report), flush=True)
    return report


if __name__ == "__main__":
    main()
