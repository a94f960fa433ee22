"""Every labelling signal at finding the gold paragraphs, on the demo's 100 HotpotQA questions.

    raglign demo --output runs/demo        # first: writes runs/demo/retrieved (MiniLM order)
    python benchmarks/label_fidelity.py --rows runs/demo/retrieved --out runs/label_fidelity \
        --json docs/label_fidelity_hotpotqa.json --md docs/label_fidelity_hotpotqa.md

Labels all questions with SmolLM2-135M (``raglign label``, resumable: a re-run continues) in up to
four jobs, ``--jobs`` picks which:

* ``parallel``: ``answer_logprob``, ``loo_logprob`` (K = 5), ``attention`` through the document
  engine (one shared prefill per question);
* ``concat``: ``answer_logprob``, ``loo_logprob`` as ordinary concatenated prompts;
* ``generate``: ``rationale_score`` (RADIO, 96 new tokens as in the demo), ``judge`` (ARL2),
  ``answer_quality`` and ``dpa``: generation-based, no context choice;
* ``gumbel``: ``gumbel_weight`` (G-Rerank Algorithm 2, the paper's settings).

Then, for every (signal, context): Recall@1/2/5, NDCG@5 and MRR with 95% bootstrap intervals
over questions (``raglign.evaluate.signals``), the retriever's order as the baseline row, and for
the likelihood signals the paired difference parallel - concat of each metric and of the values
themselves. Nothing here is a unit test: it measures what the labels are worth.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

KS = (1, 2, 5)
METRICS = ["recall@1", "recall@2", "recall@5", "ndcg@5", "mrr"]
JOBS = {
    "parallel": {"signals": ["answer_logprob", "loo_logprob", "attention"], "context": "parallel"},
    "concat": {"signals": ["answer_logprob", "loo_logprob"], "context": "concat"},
    "generate": {"signals": ["rationale_score", "judge", "answer_quality", "dpa"],
                 "context": "concat", "rationale": {"max_new_tokens": 96}},
    "gumbel": {"signals": ["gumbel_weight"], "context": "parallel"},
}
LIKELIHOOD = ("answer_logprob", "loo_logprob")


def label(job: str, rows_dir: str, out: Path, args) -> Path:
    from raglign.config import validate
    from raglign.pipeline.label import LabelConfig, run_label

    spec = dict(JOBS[job])
    cfg = validate(LabelConfig, dict(
        job="label", input=rows_dir, output=str(out / job), generator={"name": args.generator,
        "dtype": args.dtype}, actors=args.actors, cpus_per_actor=1, shard_rows=args.shard_rows,
        batch_size=args.batch_size, limit=args.limit, **spec))
    t0 = time.perf_counter()
    summary = run_label(cfg, progress=lambda s: print(f"[{job}] {s}", flush=True))
    print(f"[{job}] {summary['rows_out']} rows in {time.perf_counter() - t0:.0f} s", flush=True)
    return out / job


def value_differences(a: list[dict], b: list[dict], field: str) -> dict[str, float]:
    """Largest and mean |a - b| of a candidate field over the same questions (None on both
    sides is equal; None on one side is a mismatch and raises)."""
    by_id = {r["id"]: r for r in b}
    diffs = []
    for r in a:
        for ca, cb in zip(r["candidates"], by_id[r["id"]]["candidates"]):
            va, vb = ca.get(field), cb.get(field)
            if (va is None) != (vb is None):
                raise ValueError(f"{r['id']}: {field} null on one side only")
            if va is not None:
                diffs.append(abs(va - vb))
    return {"max_abs": max(diffs), "mean_abs": sum(diffs) / len(diffs), "values": len(diffs)}


def markdown(result: dict) -> str:
    lines = [f"Gold-paragraph retrieval by signal, {result['questions']} HotpotQA questions "
             f"(distractor setting, 10 paragraphs, 2 gold), candidates in MiniLM order; "
             f"generator {result['generator']} ({result['dtype']}); 95% bootstrap intervals.", "",
             "| signal | context | " + " | ".join(METRICS) + " |",
             "|---|---|" + "---:|" * len(METRICS)]
    for row in result["table"]:
        cells = [f"{row[m]:.3f} [{row[m + '_ci'][0]:.2f}, {row[m + '_ci'][1]:.2f}]"
                 for m in METRICS]
        lines.append(f"| {row['signal']} | {row['context']} | " + " | ".join(cells) + " |")
    if result["paired"]:
        lines += ["", "Paired difference parallel - concat (same questions; bootstrap 95% CI, "
                  "p-value) and the largest |difference| of the labels themselves:", "",
                  "| signal | " + " | ".join(METRICS) + " | \\|Δ value\\| max / mean (nats) |",
                  "|---|" + "---:|" * (len(METRICS) + 1)]
        for name, d in result["paired"].items():
            cells = [f"{d[m]['diff']:+.3f} [{d[m]['diff_ci'][0]:+.2f}, {d[m]['diff_ci'][1]:+.2f}]"
                     f" p={d[m]['p_value']:.2f}" for m in METRICS]
            lines.append(f"| {name} | " + " | ".join(cells)
                         + f" | {d['values']['max_abs']:.2g} / {d['values']['mean_abs']:.2g} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="runs/demo/retrieved", help="canonical rows (the demo's)")
    ap.add_argument("--out", default="runs/label_fidelity")
    ap.add_argument("--jobs", default="parallel,concat,generate,gumbel")
    ap.add_argument("--generator", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--shard-rows", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--limit", type=int, default=None, help="only the first N questions (a try)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()

    from raglign.data.io import read_rows
    from raglign.evaluate.signals import RETRIEVAL, paired_signal_eval, signal_eval
    from raglign.ray_session import ray_session

    out = Path(args.out)
    jobs = args.jobs.split(",")
    with ray_session():
        labelled = {job: read_rows(label(job, args.rows, out, args)) for job in jobs}
    questions = len(next(iter(labelled.values())))
    table = []
    for job, rows in labelled.items():
        fields = JOBS[job]["signals"] if job != jobs[0] else [RETRIEVAL, *JOBS[job]["signals"]]
        result = signal_eval(rows, fields, KS, n_boot=args.n_boot)
        for name in fields:
            context = "-" if name == RETRIEVAL or job == "generate" else JOBS[job]["context"]
            table.append({"signal": name, "context": context, **result["signals"][name]})
    paired = {}
    if {"parallel", "concat"} <= set(labelled):
        for name in LIKELIHOOD:
            paired[name] = {**paired_signal_eval(labelled["parallel"], labelled["concat"], name,
                                                 KS, n_boot=args.n_boot),
                            "values": value_differences(labelled["parallel"], labelled["concat"],
                                                        name)}
    result = {"date": time.strftime("%Y-%m-%d"), "questions": questions,
              "generator": args.generator, "dtype": args.dtype, "rows": args.rows,
              "table": table, "paired": paired}
    text = markdown(result)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.md:
        Path(args.md).write_text(text)


if __name__ == "__main__":
    main()
