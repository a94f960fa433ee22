"""Teacher ladder (issue "Distillation that helps"): how the base anchor's effect changes as the
teacher gets better, on a teacher whose quality is set rather than hoped for.

    raglign demo --output runs/demo                  # first: split, PDist labels and rows
    python benchmarks/teacher_ladder.py --demo runs/demo --out runs/ladder [--gold-mix 0,0.5,1]

Why a ladder: the second LLM teacher (Gemma-3-270M) ranks the training questions no better than
SmolLM2-135M (docs/distillation.md), so two LLMs give no "better teacher" axis. Here the teacher
at rung q is the demo's PDist targets (SmolLM2's softmax(answer_logprob / T)) mixed with the
gold distribution (uniform over the question's gold paragraphs among its documents),
``(1 - q) * target + q * gold``: q = 0 is the LLM teacher, q = 1 gold supervision as a
distribution, and the teacher's own ranking of the training questions rises with q. Per rung:
that ranking (MRR and Recall@5 of the targets), a plain student (anchor 0) and an anchored one
(the default anchor of a bi-encoder KL student), trained as the demo trains PDist (same base,
schedule and temperature), and their held-out ranking (reranker setting, the demo's 33 test
questions) with paired bootstrap differences against the base and anchored against plain.

Results: ``OUT/ladder.json`` and ``OUT/ladder.md`` (copied with ``--json`` / ``--md``). Every
stage is skipped when its output exists, so a re-run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from distill import _diff, differences, evaluate_runs, train_runs  # noqa: E402
from quality import write_once  # noqa: E402  (benchmarks/ is not a package)

HEADLINE = ["mrr", "recall@5"]


def log(msg: str) -> None:
    print(f"[ladder {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def gold_ids(canonical_rows: list[dict]) -> dict[str, set[str]]:
    """Question id -> the doc ids of its gold paragraphs."""
    return {r["id"]: {c["doc_id"] for c in r["candidates"] if c.get("is_gold")}
            for r in canonical_rows}


def gold_mixed(rows: list[dict], gold: dict[str, set[str]], q: float) -> list[dict]:
    """``rows`` (mined PDist rows) with each target ``(1 - q) * target + q * gold``, gold uniform
    over the row's gold documents. A row without a gold document among its documents has no gold
    distribution to mix in: an error naming it, not a silent skip."""
    out = []
    for r in rows:
        is_gold = [d["doc_id"] in gold.get(r["id"], ()) for d in r["docs"]]
        if not any(is_gold):
            raise ValueError(f"row {r['id']}: no gold paragraph among its {len(is_gold)} "
                             "documents, so no gold distribution to mix in")
        g = [float(x) / sum(is_gold) for x in is_gold]
        out.append({**r, "target": [(1 - q) * t + q * gi for t, gi in zip(r["target"], g)]})
    return out


def target_ranking(rows: list[dict], gold: dict[str, set[str]]) -> dict[str, float]:
    """The teacher's own ranking of its rows: MRR and Recall@5 of the documents sorted by target
    (ties in the rows' order, the retriever's), against the question's gold paragraphs."""
    from raglign.metrics import mrr, recall_at_k

    ranked = [[r["docs"][i]["doc_id"] for i in sorted(range(len(r["docs"])),
                                                        key=lambda i: -r["target"][i])]
              for r in rows]
    return {"mrr": sum(mrr(ids, gold[r["id"]]) for ids, r in zip(ranked, rows)) / len(rows),
            "recall@5": sum(recall_at_k(ids, gold[r["id"]], 5)
                            for ids, r in zip(ranked, rows)) / len(rows)}


def markdown(result: dict) -> str:
    t_r = result["temperature"]
    lines = ["Held-out questions (n = %d), reranker setting; paired bootstrap 95 %% CIs (▲/▼: the "
             "interval excludes 0). Base on the held-out questions: MRR %.3f, Recall@5 %.3f; on "
             "the training questions: MRR %.3f, Recall@5 %.3f. Student temperature: %s." % (
                 result["base"]["n"], result["base"]["mrr"], result["base"]["recall@5"],
                 result["base_train"]["mrr"], result["base_train"]["recall@5"],
                 "the kind's default" if t_r is None else f"{t_r:g}"), "",
             "| gold mix q | teacher MRR / R@5 (train) | student | MRR | Recall@5 | MRR − base | "
             "R@5 − base | anchored − plain: MRR | R@5 |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for rung in result["rungs"]:
        t = rung["teacher"]
        for kind in ("plain", "anchored"):
            s = rung[kind]
            lines.append(
                f"| {rung['q']:g} | {t['mrr']:.3f} / {t['recall@5']:.3f} | {kind} "
                f"(anchor {s['anchor']:g}) | {s['mrr']:.3f} | {s['recall@5']:.3f} | "
                f"{_diff(s['vs_base'], 'mrr')} | {_diff(s['vs_base'], 'recall@5')} | "
                + (f"{_diff(rung['anchored_vs_plain'], 'mrr')} | "
                   f"{_diff(rung['anchored_vs_plain'], 'recall@5')} |" if kind == "anchored"
                   else "| |"))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", default="runs/demo", help="a finished `raglign demo` run directory")
    ap.add_argument("--out", default="runs/ladder")
    ap.add_argument("--gold-mix", default="0,0.5,1", help="the rungs q")
    ap.add_argument("--temperature", type=float, default=None,
                    help="the students' score temperature (default: the reranker kind's, as the "
                         "demo trains PDist)")
    ap.add_argument("--train-workers", type=int, default=2,
                    help="Ray Train workers (global batches: speed only)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", default="docs/distill_ladder_hotpotqa.json")
    ap.add_argument("--md", default="docs/distill_ladder_hotpotqa.md")
    args = ap.parse_args()
    rungs = [float(q) for q in args.gold_mix.split(",")]
    if any(not 0 <= q <= 1 for q in rungs):
        ap.error(f"--gold-mix: every q must lie in [0, 1], got {rungs}")

    from raglign.data.io import read_rows
    from raglign.ray_session import ray_session
    from raglign.training_config import DEFAULT_ANCHOR

    demo, out = Path(args.demo), Path(args.out)
    demo_cfg = json.loads((demo / "demo_config.json").read_text())
    anchor = DEFAULT_ANCHOR[(demo_cfg["reranker_kind"], "kl")]
    gold = gold_ids(read_rows(demo / "split" / "train"))
    pdist = read_rows(demo / "mined" / "pdist")
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    teachers, runs = {}, {}
    for q in rungs:
        mixed = gold_mixed(pdist, gold, q)
        rows = write_once(lambda mixed=mixed: mixed, out / "mined" / f"gold{q:g}")
        teachers[q] = target_ranking(mixed, gold)
        log(f"teacher q={q:g}: MRR {teachers[q]['mrr']:.3f}, Recall@5 "
            f"{teachers[q]['recall@5']:.3f} on the training questions")
        scale = {} if args.temperature is None else {"temperature": args.temperature}
        runs[f"gold{q:g}"] = ("kl", rows, scale)
        runs[f"gold{q:g}.anchored"] = ("kl", rows, {**scale, "anchor": anchor})
    with ray_session():
        models = train_runs(runs, out, demo, demo_cfg, args)
        test = evaluate_runs(out, demo, demo_cfg, models, "test")
        train_split = evaluate_runs(out, demo, demo_cfg, {}, "train")
    vs_base = differences(test, "base", list(models), args.n_boot)
    result = {"demo": str(demo), "anchor": anchor, "temperature": args.temperature,
              "base": {"n": test["base"]["n"], **{m: test["base"][m] for m in HEADLINE}},
              "base_train": {m: train_split["base"][m] for m in HEADLINE}, "rungs": []}
    for q in rungs:
        plain, anchored = f"gold{q:g}", f"gold{q:g}.anchored"
        result["rungs"].append({
            "q": q, "teacher": teachers[q],
            "plain": {"anchor": 0.0, **{m: test[plain][m] for m in HEADLINE},
                      "vs_base": vs_base[plain]},
            "anchored": {"anchor": anchor, **{m: test[anchored][m] for m in HEADLINE},
                         "vs_base": vs_base[anchored]},
            "anchored_vs_plain": differences(test, plain, [anchored], args.n_boot)[anchored]})
    result["seconds"] = round(time.monotonic() - started, 1)
    table = markdown(result)
    for path, text in ((out / "ladder.json", json.dumps(result, indent=2) + "\n"),
                       (out / "ladder.md", table), (args.json, json.dumps(result, indent=2) + "\n"),
                       (args.md, table)):
        if path:
            Path(path).write_text(text)
    print("\n" + table, flush=True)
    log(f"finished in {result['seconds'] / 60:.1f} min -> {out / 'ladder.md'}")


if __name__ == "__main__":
    main()
