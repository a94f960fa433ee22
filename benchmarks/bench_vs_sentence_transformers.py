"""``raglign train`` side by side with sentence-transformers' ``CrossEncoderTrainer``.

The same groups, model weights, loss, batch size, max length, steps, optimizer, schedule, seed
and data order, in one run:

* **Groups**: HotpotQA distractor questions (``$RAGLIGN_SHARED_DATA/hotpotqa``, read by
  raglign's own loader): the first supporting paragraph is the positive, the first ``m``
  non-supporting paragraphs the negatives (the second supporting paragraph is left out: it is
  relevant too). Written once as mined groups (``raglign mine``'s columns) and read back with
  :func:`raglign.training.tables.load_train_table`, so both tools see the same document strings.
* **Loss**: raglign's ``infonce`` at temperature 1 (cross-entropy of ``softmax(scores)`` against
  the positive; in-batch negatives are off, as the config requires for a cross-encoder) and ST's
  ``ListNetLoss`` with ``activation_fn=Identity()`` and labels ``log(one-hot)`` (0 on the
  positive, -inf elsewhere). ListNet is the cross-entropy between ``softmax(labels)`` and
  ``softmax(scores)``; with those labels its target is exactly one-hot, which is InfoNCE.
  (Binary labels ``[1, 0, …]`` would give the soft target ``softmax([1, 0, …])``, i.e. raglign's
  ``kl`` objective plus a constant; ST's ``MultipleNegativesRankingLoss`` always adds in-batch
  negatives when a device batch holds more than one query — ``num_negatives=0`` raises in
  ``torch.multinomial`` — so it is not the same loss.) A first check computes both losses on the
  first batch from the same weights; they must agree to 1e-5.
* **Model**: ``--model`` loaded once as raglign's cross-encoder (the packaged all-MiniLM-L6-v2
  with a seeded one-logit head), dropout set to 0 and saved; both tools load that directory.
  Dropout is off so the two runs are the same computation step by step and their losses can be
  compared per step, not only in distribution.
* **Schedule**: fused AdamW (``torch.optim.AdamW(fused=True)``: raglign's ``build_optimizer``
  and ST's default ``optim="adamw_torch_fused"``), weight decay 0.01 off biases and
  LayerNorm weights in both, linear warmup over ceil(10 % of the steps) then linear decay to 0,
  gradient clipping at 1.0, fp32 on CPU.
* **Order**: raglign's epoch-0 permutation of the groups (:func:`raglign.training.batches.
  epoch_permutation`); ST gets the groups in that order and a sequential batch sampler (its
  ``batch_sampler`` argument takes a callable), so step k sees the same groups in both.

Layouts (``--layouts``), interleaved and repeated ``--repeats`` times: ``st`` (ST in its own
process, ``--threads`` torch threads), ``w1`` (``raglign train``, 1 Ray Train worker x
``--threads`` CPUs: Ray sets its OMP_NUM_THREADS), ``w2`` (2 workers x 1 CPU, DDP over gloo),
``local`` (``num_workers: 0``, Ray Train's local mode: the same loop in this process, no Ray).

Pairs/s = (query, document) pairs scored forward + backward over steps 2..N divided by the time
from the end of step 1 to the end of step N (ST: a ``TrainerCallback``'s clock; raglign: the
``wall_time`` of each ``metrics.jsonl`` line), so startup, the first step's allocations and the
final export are outside it; the end-to-end wall time of each run is reported beside it.
On a shared machine a process gets what the other tenants leave: "CPU share" is its CPU time
over the same interval (rank 0 for raglign), and pairs per CPU-second (pairs/s over the shares
of all processes, rank 0's taken for each worker) compares the code rather than the moment.
Final loss = the mean of the last ``--final-steps`` step losses.

    python benchmarks/bench_vs_sentence_transformers.py --out /tmp/vs_st
    python benchmarks/bench_vs_sentence_transformers.py --tiny --out /tmp/vs_st_tiny
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("RAGLIGN_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
LAYOUTS = {"st": "sentence-transformers CrossEncoderTrainer, 1 process",
           "w1": "raglign train, 1 worker", "w2": "raglign train, 2 workers (DDP)",
           "local": "raglign train, local mode (num_workers 0)"}


# ----------------------------------------------------------------------------- data and model

def hotpotqa_groups(path: Path, m: int) -> tuple[list[dict], list[str]]:
    """InfoNCE groups (mined-group columns) from HotpotQA rows, and why any row gave none."""
    from raglign.data.loaders import load_records

    groups, skipped = [], []
    for row in load_records("hotpotqa", path):
        gold = [c for c in row["candidates"] if c["is_gold"]]
        other = [c for c in row["candidates"] if c["is_gold"] is False]
        if not gold or len(other) < m:
            skipped.append(f"{row['id']}: {len(gold)} supporting and {len(other)} other "
                           f"paragraphs, need 1 and {m}")
            continue
        docs = [{k: c[k] for k in ("doc_id", "title", "text")} for c in [gold[0], *other[:m]]]
        groups.append({"id": row["id"], "question": row["question"], "docs": docs,
                       "labels": [1.0] + [0.0] * m})
    return groups, skipped


def save_cross_encoder(dest: Path, model: str, max_length: int, seed: int) -> Path:
    """``model`` as raglign's cross-encoder (seeded head, as ``raglign train`` builds it), with
    dropout off, saved where both tools load it."""
    import torch

    from raglign.models.rerankers import load_reranker

    torch.manual_seed(seed)
    reranker = load_reranker(model, kind="cross", max_length=max_length)
    _no_dropout(reranker.model.config)
    reranker.save(dest)
    return dest


def tiny_cross_encoder(dest: Path, tokenizer, max_length: int, seed: int) -> Path:
    """A random 2-layer, 32-wide BERT cross-encoder with a real tokenizer, dropout off. Its
    weights are drawn with std 0.2 and its head with std 1 (BERT's 0.02 gives every pair nearly
    the same score) so scores, and hence losses, differ between groups: a run that trained on
    other groups or in another order would show in the losses."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from raglign.models.rerankers import CrossEncoderReranker

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                     num_labels=1, initializer_range=0.2)
    _no_dropout(cfg)
    model = BertForSequenceClassification(cfg)
    torch.nn.init.normal_(model.classifier.weight, std=1.0)
    CrossEncoderReranker(model, tokenizer, max_length).save(dest)
    return dest


def _no_dropout(config) -> None:
    config.hidden_dropout_prob = 0.0
    config.attention_probs_dropout_prob = 0.0
    config.classifier_dropout = 0.0


def st_labels(values: list[float]) -> list[float]:
    """ListNet labels whose softmax is the one-hot target of InfoNCE: log(one-hot)."""
    return [0.0 if v == 1.0 else -math.inf for v in values]


def st_loss(model):
    """ST's loss that equals raglign's InfoNCE (temperature 1) on ``st_labels``."""
    import torch
    from sentence_transformers.cross_encoder.losses import ListNetLoss

    return ListNetLoss(model, activation_fn=torch.nn.Identity())


def train_config(data: str, output: str, model: str, args, workers: int):
    from raglign.training_config import TrainConfig

    return TrainConfig(data=data, output=output, model=model, kind="cross", objective="infonce",
                       temperature=1.0, max_length=args.max_length, epochs=1,
                       batch_size=args.batch_size, lr=args.lr, weight_decay=0.01,
                       warmup_ratio=0.1, max_grad_norm=1.0, seed=args.seed, num_workers=workers,
                       cpus_per_worker=args.threads if workers <= 1 else 1, log_every=1,
                       checkpoint_every=10**6)


def same_batch_losses(cfg, table, rows: list[int]) -> tuple[float, float]:
    """The loss of the groups ``rows`` of ``table`` (``load_train_table``'s) under raglign's
    training path (the reranker ``raglign train`` builds, behind its DDP scorer, the configured
    loss on ``make_batch``) and under ST (``CrossEncoder`` of the same directory, ``st_loss``)."""
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder

    from raglign.training.batches import make_batch
    from raglign.training.loss import build_loss
    from raglign.training.reranker import build_reranker, scorer_class

    batch = make_batch(table, rows)
    scorer = scorer_class()(build_reranker(cfg, "cpu"), cfg.in_batch_negatives)
    ours = build_loss(cfg, torch.device("cpu"))(scorer, batch)
    model = CrossEncoder(cfg.model, max_length=cfg.max_length, device="cpu")
    model.train()
    theirs = st_loss(model)([batch.queries, batch.docs],
                            [torch.tensor(st_labels(v)) for v in batch.columns["values"]])
    return ours.item(), theirs.item()


# ----------------------------------------------------------------------------- the runs

def pairs_per_s(pairs: list[int], ends: list[float]) -> float:
    """Pairs of steps 2..N over the time from step 1's end to step N's."""
    return sum(pairs[1:]) / (ends[-1] - ends[0])


def st_worker(spec_path: str) -> None:
    """One ST training run (a separate process: its own torch threads, no Ray)."""
    t_start = time.perf_counter()
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    import pyarrow.parquet as pq
    from datasets import Dataset
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends, self.cpu, self.losses = [], [], []

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())
            self.cpu.append(time.process_time())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    def in_order(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
        return DefaultBatchSampler(SequentialSampler(dataset), batch_size=batch_size,
                                   drop_last=drop_last, valid_label_columns=valid_label_columns,
                                   generator=generator, seed=seed)

    t_imported = time.perf_counter()
    rows = pq.read_table(spec["data"]).to_pylist()
    dataset = Dataset.from_dict({"query": [r["question"] for r in rows],
                                 "docs": [r["docs"] for r in rows],
                                 "labels": [st_labels(r["values"]) for r in rows]})
    model = CrossEncoder(spec["model"], max_length=spec["max_length"], device="cpu")
    clock = Clock()
    args = CrossEncoderTrainingArguments(
        output_dir=spec["tmp"], per_device_train_batch_size=spec["batch_size"],
        max_steps=spec["steps"], learning_rate=spec["lr"], weight_decay=0.01, warmup_steps=0.1,
        lr_scheduler_type="linear", max_grad_norm=1.0, seed=spec["seed"],
        optim="adamw_torch_fused", logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, disable_tqdm=True, dataloader_drop_last=True, batch_sampler=in_order)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset,
                                  loss=st_loss(model), callbacks=[clock])
    t_train = time.perf_counter()
    trainer.train()
    t_end = time.perf_counter()
    n = [len(r["docs"]) for r in rows]
    b = spec["batch_size"]
    pairs = [sum(n[i * b:(i + 1) * b]) for i in range(spec["steps"])]
    Path(spec["result"]).write_text(json.dumps({
        "losses": clock.losses, "pairs": pairs, "pairs_per_s": pairs_per_s(pairs, clock.ends),
        "cpu_share": (clock.cpu[-1] - clock.cpu[0]) / (clock.ends[-1] - clock.ends[0]),
        "train_s": clock.ends[-1] - clock.ends[0], "fit_s": t_end - t_train,
        "setup_s": t_train - t_imported,
        "import_s": t_imported - t_start, "threads": torch.get_num_threads(),
        "optimizer": type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                          else trainer.optimizer).__name__,
        "attention": model.model.config._attn_implementation}))


def run_st(ordered: Path, model_dir: Path, tmp: Path, args) -> dict:
    spec = {"data": str(ordered), "model": str(model_dir), "max_length": args.max_length,
            "batch_size": args.batch_size, "steps": args.steps, "lr": args.lr, "seed": args.seed,
            "threads": args.threads, "tmp": str(tmp / "st-out"), "result": str(tmp / "st.json")}
    (tmp / "st-spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--st-worker", str(tmp / "st-spec.json")],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"the sentence-transformers run failed:\n{proc.stderr[-4000:]}")
    out = json.loads((tmp / "st.json").read_text())
    return {**out, "wall_s": wall}


def run_raglign(data: Path, model_dir: Path, out: Path, args, workers: int) -> dict:
    from raglign.pipeline.train import train

    cfg = train_config(str(data), str(out), str(model_dir), args, workers)
    t0 = time.perf_counter()
    result = train(cfg, step_bar=False)
    wall = time.perf_counter() - t0
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    history = [h for h in history if "loss" in h]
    if [h["step"] for h in history] != list(range(1, args.steps + 1)) or result.step != args.steps:
        raise RuntimeError(f"raglign logged steps {[h['step'] for h in history]}, expected "
                           f"1..{args.steps}")
    pairs = [args.batch_size * (args.m + 1)] * args.steps
    return {"losses": [h["loss"] for h in history], "pairs": pairs,
            "pairs_per_s": pairs_per_s(pairs, [h["wall_time"] for h in history]),
            "train_s": history[-1]["wall_time"] - history[0]["wall_time"], "wall_s": wall,
            "cpu_share": ((history[-1]["cpu_time"] - history[0]["cpu_time"])
                          / (history[-1]["wall_time"] - history[0]["wall_time"])),
            "threads": cfg.cpus_per_worker, "workers": workers}


# ----------------------------------------------------------------------------- report

def summarise(runs: list[dict], final_steps: int) -> dict:
    """Per-layout medians, the ratios against the targets, and how far the losses are apart."""
    by = {}
    for r in runs:
        by.setdefault(r["layout"], []).append(r)
    med = {k: statistics.median(r["pairs_per_s"] for r in v) for k, v in by.items()}
    st = by.get("st", [None])[0]
    loss_gap = {}
    for r in runs:
        r["final_loss"] = statistics.fmean(r["losses"][-final_steps:])
        if st is not None and r["layout"] != "st":
            r["max_step_loss_diff_vs_st"] = max(abs(a - b) for a, b in zip(r["losses"], st["losses"]))
            loss_gap[r["layout"]] = max(loss_gap.get(r["layout"], 0.0), r["max_step_loss_diff_vs_st"])
    ratios = {}
    if "st" in med and "w1" in med:
        ratios["w1_vs_st"] = {"value": med["w1"] / med["st"], "target": 0.95}
    if "w1" in med and "w2" in med:
        ratios["w2_vs_w1"] = {"value": med["w2"] / med["w1"], "target": 1.7}
    if "st" in med and "local" in med:
        ratios["local_vs_st"] = {"value": med["local"] / med["st"], "target": 0.95}
    return {"median_pairs_per_s": med, "ratios": ratios, "max_step_loss_diff_vs_st": loss_gap}


def markdown(report: dict) -> str:
    a = report["args"]
    lines = [f"{a['groups']} HotpotQA groups of 1 + {a['m']}, model `{a['model']}`, max length "
             f"{a['max_length']}, {a['batch_size']} groups per step, {a['steps']} steps, lr "
             f"{a['lr']}, seed {a['seed']}; first-batch loss raglign "
             f"{report['first_batch']['raglign']:.6f} vs ST {report['first_batch']['st']:.6f} "
             f"(|diff| {report['first_batch']['diff']:.1e}).", "",
             "| run | layout | torch threads | pairs/s (steps 2..N) | CPU share of a process "
             "| pairs per CPU-s | steps 2..N s | end-to-end s "
             f"| final loss (last {a['final_steps']}) | max step loss diff vs ST | load avg |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        threads = (f"{r['threads']}" if r["layout"] != "w2" else "1 per worker")
        diff = r.get("max_step_loss_diff_vs_st")
        lines.append(f"| {r['repeat']} | {LAYOUTS[r['layout']]} | {threads} | "
                     f"{r['pairs_per_s']:.2f} | {r['cpu_share']:.2f} | "
                     f"{r['pairs_per_s'] / (r['cpu_share'] * max(r.get('workers', 1), 1)):.2f} | "
                     f"{r['train_s']:.1f} | {r['wall_s']:.1f} | "
                     f"{r['final_loss']:.4f} | {'-' if diff is None else f'{diff:.1e}'} | "
                     f"{r['load']:.1f} |")
    lines.append("")
    for name, ratio in report["summary"]["ratios"].items():
        ok = "meets" if ratio["value"] >= ratio["target"] else "**misses**"
        lines.append(f"- {name} (medians): {ratio['value']:.2f}x, target >= {ratio['target']}x: {ok}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for results.json and results.md")
    ap.add_argument("--tiny", action="store_true",
                    help="a random 2-layer model, max length 64, 4 steps, st and local only: "
                         "checks the pipeline and the loss agreement in well under a minute")
    ap.add_argument("--layouts", default=None, help="comma-separated of " + ", ".join(LAYOUTS))
    ap.add_argument("--repeats", type=int, default=1, help="rounds of all layouts, interleaved")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default 10; tiny 4)")
    ap.add_argument("--batch-size", type=int, default=4, help="groups per optimizer step")
    ap.add_argument("--m", type=int, default=6, help="negatives per group")
    ap.add_argument("--max-length", type=int, default=None, help="default 256; tiny 64")
    ap.add_argument("--lr", type=float, default=None, help="default 6e-5; tiny 5e-4")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of ST and of raglign's single worker")
    ap.add_argument("--final-steps", type=int, default=3, help="steps the final loss averages")
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--data", default=str(DATA / "hotpotqa" / "hotpotqa_train.json"))
    args = ap.parse_args(argv)
    args.steps = args.steps or (4 if args.tiny else 10)
    args.max_length = args.max_length or (64 if args.tiny else 256)
    args.lr = args.lr or (5e-4 if args.tiny else 6e-5)
    layouts = (args.layouts or ("st,local" if args.tiny else "st,w1,w2")).split(",")
    if unknown := set(layouts) - set(LAYOUTS):
        ap.error(f"unknown layouts {sorted(unknown)}; choose from {', '.join(LAYOUTS)}")
    if args.steps < 2:
        ap.error("--steps must be >= 2 (throughput is timed from the end of step 1)")

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from raglign.config import RayConfig
    from raglign.ray_session import ray_session
    from raglign.training.batches import epoch_permutation
    from raglign.training.tables import load_train_table

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = args.steps * args.batch_size
    groups, skipped = hotpotqa_groups(Path(args.data), args.m)
    if len(groups) < n:
        ap.error(f"{args.data} gives {len(groups)} groups, fewer than steps x batch size = {n}")
    report = {"args": {**vars(args), "groups": n, "layouts": layouts,
                       "model": "tiny random BERT" if args.tiny else args.model},
              "skipped_rows": skipped, "cpus": os.cpu_count(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": []}
    with tempfile.TemporaryDirectory(prefix="rg-vs-st-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "groups"
        data.mkdir()
        pq.write_table(pa.Table.from_pylist(groups[:n]), data / "part-00000.parquet")
        table, _ = load_train_table(str(data), "infonce")
        order = epoch_permutation(table.num_rows, args.seed, 0)  # raglign's epoch-0 order
        pq.write_table(table.take(pa.array(order)), tmp / "st-order.parquet")
        if args.tiny:
            from raglign.models.registry import load_tokenizer

            model_dir = tiny_cross_encoder(tmp / "model", load_tokenizer("minilm-l6"),
                                           args.max_length, args.seed)
        else:
            model_dir = save_cross_encoder(tmp / "model", args.model, args.max_length, args.seed)

        before = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        ours, theirs = same_batch_losses(
            train_config(str(data), str(tmp / "check"), str(model_dir), args, 1), table,
            order[:args.batch_size])
        torch.set_num_threads(before)
        report["first_batch"] = {"raglign": ours, "st": theirs, "diff": abs(ours - theirs)}
        print(f"first batch, same weights: raglign {ours:.6f}, ST {theirs:.6f}", flush=True)
        if abs(ours - theirs) > 1e-5:
            raise SystemExit(f"the two losses differ on the same batch ({ours} vs {theirs}): "
                             "the comparison would not be like for like")

        needs_ray = any(k in ("w1", "w2") for k in layouts)
        with ray_session(RayConfig(num_cpus=2)) if needs_ray else contextlib.nullcontext():
            for rep in range(1, args.repeats + 1):
                for layout in layouts:
                    run_dir = tmp / f"{layout}-{rep}"
                    run_dir.mkdir()
                    load0 = os.getloadavg()[0]
                    if layout == "st":
                        r = run_st(tmp / "st-order.parquet", model_dir, run_dir, args)
                    else:
                        workers = {"w1": 1, "w2": 2, "local": 0}[layout]
                        r = run_raglign(data, model_dir, run_dir / "out", args, workers)
                    r.update(layout=layout, repeat=rep, load=(load0 + os.getloadavg()[0]) / 2)
                    report["runs"].append(r)
                    print(f"[{rep}] {LAYOUTS[layout]}: {r['pairs_per_s']:.2f} pairs/s, "
                          f"end-to-end {r['wall_s']:.1f} s, losses "
                          f"{' '.join(f'{x:.4f}' for x in r['losses'])}", flush=True)
    report["summary"] = summarise(report["runs"], args.final_steps)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(markdown(report))
    print(markdown(report), flush=True)
    return report


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--st-worker":
        st_worker(sys.argv[2])
    else:
        main()
