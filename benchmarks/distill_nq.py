"""The student temperature and the base anchor chosen on a validation split large enough to
separate them, and an LLM-supervised student measured against its base and its control on
held-out questions (issue "Distillation that helps").

The demo's HotpotQA split (67 training questions, 22 of them for validation) could not tell a
student temperature of 0.02 from 0.1 (docs/distillation.md, point 8). NQ-open's oracle set has
2,655 questions, each with its gold Wikipedia passage in the corpus, so this benchmark takes
hundreds of questions and splits them three ways by the fixed id hash: **train** (the teacher
labels them, the students train on them), **validation** (chooses the setting) and **test** (the
chosen student is measured there, once). The recipe is the demo's PDist student: SmolLM2-135M's
``answer_logprob`` targets at mining temperature 1.0, MiniLM bi-encoder, 2 epochs, batch 8, lr
6e-5, 2 Train workers; the grid is the student temperature x the base anchor x how the anchor
mixes the base in (``anchor_mix``: arithmetic, or the geometric product of experts).

    S=$RAGLIGN_SHARED_DATA; D=runs/nq
    raglign data convert --format dpr $S/nq_oracle/nq-open-oracle.jsonl.gz $D/queries
    raglign data corpus --format dpr-ctxs $S/nq_oracle/nq-open-oracle.jsonl.gz $D/corpus/nq_gold
    raglign data corpus --format jsonl $S/flashrag/wiki_sample_1000.jsonl $D/corpus/wiki
    raglign retrieve $D/queries $D/corpus $D/retrieved --k 10
    python benchmarks/distill_nq.py --retrieved runs/nq/retrieved --out runs/distill_nq

Stages (each skipped when its output exists, so a re-run resumes): split, teacher labels on the
training questions (their signal evaluation is the teacher's own ranking), PDist targets, one
student per grid point, ``raglign eval`` (reranker setting) of the base and every student on
validation and test, the choice (best validation MRR), the chosen setting's control (targets
shuffled within each question), and the report with paired bootstrap differences.

``--kind cross`` trains MiniLM as a cross-encoder instead (the student temperature on logits;
its base has a new seeded head, so it ranks by chance and no anchor applies), on the same split
and labels.

Results: ``OUT/distill_nq[_cross].json`` and ``.md``, copied to ``docs/`` (``--json`` / ``--md``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from distill import HEADLINE, _diff, control_rows, differences  # noqa: E402

RECIPE = {"model": "minilm-l6", "kind": "bi", "objective": "kl", "epochs": 2, "batch_size": 8,
          "lr": 6e-5, "max_length": 256, "cpu_bf16": "auto"}
GENERATOR = "smollm2-135m"
PDIST_TEMPERATURE = 1.0  # the demo's mining temperature: softmax(log p(a | q, d) / 1.0)


def log(msg: str) -> None:
    print(f"[distill_nq {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def hash_order(row_id: str) -> bytes:
    """The order questions are taken in: a hash of the id, whatever the file's order."""
    return hashlib.sha256(f"order:{row_id}".encode()).digest()


def split(retrieved: Path, out: Path, questions: int) -> dict[str, Path]:
    """``questions`` rows of ``retrieved`` (the first by a hash of their id, so the choice does
    not depend on the file order), dealt by :func:`raglign.data.split.is_test`: test 30 %, then
    validation 40 % of the rest (seed 1), train the remainder."""
    from raglign.data.io import read_rows, write_rows
    from raglign.data.split import split_rows

    paths = {s: out / "split" / s for s in ("train", "val", "test")}
    if (out / "split" / "counts.json").exists():
        return paths
    rows = sorted(read_rows(retrieved), key=lambda r: hash_order(str(r["id"])))[:questions]
    rest, test = split_rows(rows, 0.3)
    train, val = split_rows(rest, 0.4, seed=1)
    parts = {"train": train, "val": val, "test": test}
    for s, p in paths.items():
        write_rows(parts[s], p)
    (out / "split" / "counts.json").write_text(json.dumps({s: len(v) for s, v in parts.items()}))
    log("split: " + ", ".join(f"{s} {len(v)}" for s, v in parts.items()))
    return paths


def teacher(train: Path, out: Path, args) -> tuple[Path, Path]:
    """The teacher's labels on the training questions and the PDist rows mined from them."""
    from raglign.pipeline.label import LabelConfig, run_label
    from raglign.pipeline.mine import MineConfig, run_mine

    labelled, mined = out / "labelled", out / "mined" / "pdist"
    if not (labelled / "_summary.json").exists():
        t = time.monotonic()
        run_label(LabelConfig(input=str(train), output=str(labelled), generator=GENERATOR,
                              signals=["answer_logprob"], encoder="minilm-l6",
                              actors=args.actors, shard_rows=args.shard_rows, batch_size=8,
                              cpus_per_actor=1), progress=log)
        log(f"labels: {time.monotonic() - t:.0f}s")
    if not (mined / "part-00000.parquet").exists():
        run_mine(MineConfig(input=str(labelled), output=str(mined), targets="pdist",
                            temperature=PDIST_TEMPERATURE), progress=log)
    return labelled, mined


def run_name(kind: str, temperature: float, anchor: float, mix: str = "arithmetic") -> str:
    """``T<student temperature>-a<anchor>``, ``-geo`` for the geometric anchor, prefixed by
    the kind for cross-encoders."""
    return (("cross-" if kind == "cross" else "") + f"T{temperature:g}-a{anchor:g}"
            + ("-geo" if mix == "geometric" else ""))


def grid(temperatures: str, anchors: str, mixes: str) -> list[tuple[float, float, str]]:
    """(temperature, anchor, anchor_mix) points; the mix only varies where there is an anchor."""
    points = []
    for t in map(float, temperatures.split(",")):
        for a in map(float, anchors.split(",")):
            points += [(t, a, m) for m in (mixes.split(",") if a else ["arithmetic"])]
    return points


def student(data: Path, out: Path, name: str, setting: tuple[float, float, str],
            args) -> Path:
    """A trained student's model directory (trained unless it exists)."""
    from raglign.pipeline.train import train
    from raglign.training_config import TrainConfig

    model = out / "train" / name / "model"
    if not model.exists():
        t = time.monotonic()
        train(TrainConfig(data=str(data), output=str(model.parent), run_name=f"distill-nq-{name}",
                          temperature=setting[0], anchor=setting[1], anchor_mix=setting[2],
                          base_merge=0.0,  # exported unmerged: benchmarks/wise_ft.py merges
                          num_workers=args.train_workers, **{**RECIPE, "kind": args.kind}))
        log(f"train {name}: {time.monotonic() - t:.0f}s")
    return model


def evaluate(out: Path, rows: Path, part: str, models: dict[str, Path], args) -> dict[str, dict]:
    """``raglign eval`` reports (reranker setting) of the base and ``models`` on ``rows``; the
    missing ones in one Ray pass."""
    from raglign.pipeline.evaluate import EvalConfig, evaluate_many

    runs = {"base": RECIPE["model"], **{n: str(m) for n, m in models.items()}}
    # files named by the trained run (``control`` is another model per kind and choice); a
    # cross-encoder's base is MiniLM with a new (seeded) one-logit head: another base
    paths = {n: out / "eval" / part / (f"base-{args.kind}.json" if n == "base" else
                                       f"{Path(m).parent.name}.json") for n, m in runs.items()}
    todo = [EvalConfig(data=str(rows), output=str(paths[n]), name=n, reranker=m,
                       reranker_kind=args.kind, k1=args.k, actors=args.actors)
            for n, m in runs.items() if not paths[n].exists()]
    if todo:
        evaluate_many(todo)
    return {n: {**json.loads(p.read_text()), "_path": str(p)} for n, p in paths.items()}


def teacher_quality(labelled: Path) -> dict[str, dict]:
    """The teacher's and the retrieval order's (the base's) ranking of the training questions."""
    signals = json.loads((labelled / "_signal_eval.json").read_text())["signals"]
    return {name: {m: signals[name][m] for m in HEADLINE}
            for name in ("retrieval", "answer_logprob")}


def mixed_target_quality(labelled: Path, mined: Path, temperature: float = 0.02,
                         anchor: float = 0.5) -> dict[str, dict]:
    """What the anchored targets themselves rank, before any student: each PDist row's target
    mixed with the base's distribution ``softmax(score / T)`` arithmetically and geometrically
    (the training loss's own :func:`raglign.objectives.geometric_mix`), scored against the gold
    passages like a teacher (``teacher_ladder.target_ranking``). The candidates' ``score`` is
    the base's only because MiniLM both retrieves and is the base (the demo's and this
    benchmark's setting). Rows without a gold passage among their candidates are left out, as
    the label job's signal evaluation leaves them out."""
    import torch

    from raglign.data.io import read_rows
    from raglign.objectives import geometric_mix
    from teacher_ladder import gold_ids, target_ranking

    canonical = read_rows(labelled)
    gold = gold_ids(canonical)
    score = {r["id"]: {c["doc_id"]: c["score"] for c in r["candidates"]} for r in canonical}
    rows = [r for r in read_rows(mined) if gold[r["id"]]]
    out = {}
    for mix in ("arithmetic", "geometric"):
        mixed = []
        for r in rows:
            target = torch.tensor([r["target"]], dtype=torch.float64)
            base = torch.tensor([[score[r["id"]][d["doc_id"]] for d in r["docs"]]],
                                dtype=torch.float64)
            t = (geometric_mix(target, base, anchor, temperature) if mix == "geometric" else
                 (1 - anchor) * target + anchor * torch.softmax(base / temperature, dim=1))
            mixed.append({**r, "target": t[0].tolist()})
        out[mix] = target_ranking(mixed, gold)
    return out


def table(reports: dict[str, dict], vs_base: dict, vs_default: dict, default: str,
          mark: str | None = None) -> list[str]:
    """Markdown rows: each run's MRR and Recall@5 and its paired differences to the base and to
    ``default`` (``mark``: a run name set in bold)."""
    lines = [f"| run | MRR | Recall@5 | MRR − base | R@5 − base | MRR − {default} | "
             f"R@5 − {default} |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in reports.items():
        label = f"**{name}**" if name == mark else name
        lines.append(f"| {label} | {r['mrr']:.3f} | {r['recall@5']:.3f} | "
                     f"{_diff(vs_base.get(name), 'mrr')} | {_diff(vs_base.get(name), 'recall@5')}"
                     f" | {_diff(vs_default.get(name), 'mrr')} | "
                     f"{_diff(vs_default.get(name), 'recall@5')} |")
    return lines


def markdown(result: dict) -> str:
    teach, chosen, default = result["teacher"], result["chosen"], result["default"]
    base = ("bi-encoder" if result["kind"] == "bi" else
            "cross-encoder (MiniLM with a new seeded head)")
    lines = [f"NQ-open oracle questions, MiniLM {base} base, {GENERATOR} PDist teacher; split "
             f"{result['split']}. Teacher's own MRR / Recall@5 on the training questions: "
             f"{teach['answer_logprob']['mrr']:.3f} / {teach['answer_logprob']['recall@5']:.3f} "
             f"(the base's: {teach['retrieval']['mrr']:.3f} / "
             f"{teach['retrieval']['recall@5']:.3f}); the targets mixed with the base's "
             f"distribution (anchor 0.5, T 0.02): {_pair(result['mixed_targets']['arithmetic'])}"
             f" arithmetic, {_pair(result['mixed_targets']['geometric'])} geometric. "
             f"Runs are `T<student temperature>-a<anchor>`,"
             f" `-geo` the geometric anchor (`anchor_mix`); `{default}` is the default before "
             f"this benchmark. Differences: paired bootstrap "
             f"95 % CIs (▲/▼: the interval excludes 0).", "",
             f"**Validation** (n = {result['val']['base']['n']}): chosen `{chosen}` by MRR.", ""]
    lines += table(result["val"], result["val_vs_base"], result["val_vs_default"], default)
    lines += ["", f"**Test** (n = {result['test']['base']['n']}); `control` is `{chosen}` "
              f"trained on its targets shuffled within each question.", ""]
    lines += table(result["test"], result["test_vs_base"], result["test_vs_default"], default)
    c = result["test_vs_control"]
    lines += ["", f"`{chosen}` − control on test: MRR {_diff(c, 'mrr')}, Recall@5 "
              f"{_diff(c, 'recall@5')}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--retrieved", default="runs/nq/retrieved",
                    help="canonical rows with their retrieved candidates (raglign retrieve)")
    ap.add_argument("--out", default="runs/distill_nq")
    ap.add_argument("--questions", type=int, default=500)
    ap.add_argument("--kind", choices=("bi", "cross"), default="bi",
                    help="the student: MiniLM as a bi-encoder (cosine) or as a cross-encoder "
                         "(a new seeded head: its base ranks by chance, so no anchor)")
    ap.add_argument("--temperatures", default=None, help="default: 0.02,0.1 bi; 0.3,1,3 cross")
    ap.add_argument("--anchors", default=None, help="default: 0,0.5 bi; 0 cross")
    ap.add_argument("--mixes", default="arithmetic,geometric",
                    help="anchor_mix values tried at each anchor above 0")
    ap.add_argument("--default", default=None,
                    help="the default before this benchmark (temperature,anchor), compared "
                         "against: 0.02,0.5 bi; 1,0 cross")
    ap.add_argument("--k", type=int, default=10, help="candidates reranked (eval's k1)")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--shard-rows", type=int, default=32)
    ap.add_argument("--train-workers", type=int, default=2)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", default=None, help="default: docs/distill_nq[_cross].json")
    ap.add_argument("--md", default=None, help="default: docs/distill_nq[_cross].md")
    ap.add_argument("--targets-of", metavar="RUN",
                    help="only print what the anchored targets of RUN (a directory with "
                         "labelled/ and mined/pdist/: a raglign demo or this benchmark's --out) "
                         "rank, and exit")
    args = ap.parse_args()
    if args.targets_of:
        run = Path(args.targets_of)
        print(json.dumps(mixed_target_quality(run / "labelled", run / "mined" / "pdist"),
                         indent=2))
        return
    bi = args.kind == "bi"
    settings = {run_name(args.kind, *g): g for g in grid(
        args.temperatures or ("0.02,0.1" if bi else "0.3,1,3"),
        args.anchors or ("0,0.5" if bi else "0"), args.mixes)}
    default = run_name(args.kind, *map(float, (args.default or ("0.02,0.5" if bi else "1,0"))
                                       .split(",")))
    if default not in settings:
        ap.error(f"--default {args.default} is not on the grid")

    from raglign.ray_session import ray_session

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with ray_session():
        parts = split(Path(args.retrieved), out, args.questions)
        labelled, pdist = teacher(parts["train"], out, args)
        models = {name: student(pdist, out, name, g, args) for name, g in settings.items()}
        val = evaluate(out, parts["val"], "val", models, args)
        chosen = max(models, key=lambda n: val[n]["mrr"])  # ties: the first on the grid
        log(f"chosen on validation: {chosen} (MRR {val[chosen]['mrr']:.3f})")
        models["control"] = student(control_rows(pdist, "target", out / "control" / "pdist"),
                                    out, f"control-{chosen}", settings[chosen], args)
        test = evaluate(out, parts["test"], "test", models, args)
    runs = [n for n in models if n != "control"]
    result = {
        "split": ", ".join(f"{s} {n}" for s, n in
                           json.loads((out / "split" / "counts.json").read_text()).items()),
        "kind": args.kind, "teacher": teacher_quality(labelled),
        "mixed_targets": mixed_target_quality(labelled, pdist), "chosen": chosen,
        "default": default,
        "val": {n: _summary(r) for n, r in val.items()},
        "val_vs_base": differences(val, "base", runs, args.n_boot),
        "val_vs_default": differences(val, default, [n for n in runs if n != default],
                                      args.n_boot),
        "test": {n: _summary(r) for n, r in test.items()},
        "test_vs_base": differences(test, "base", list(models), args.n_boot),
        "test_vs_default": differences(test, default, [n for n in runs if n != default],
                                       args.n_boot),
        "test_vs_control": differences(test, "control", [chosen], args.n_boot)[chosen]}
    md, js = markdown(result), json.dumps(result, indent=2) + "\n"
    stem = "distill_nq" + ("" if bi else "_cross")
    for path, text in ((out / f"{stem}.json", js), (out / f"{stem}.md", md),
                       (Path(args.json or f"docs/{stem}.json"), js),
                       (Path(args.md or f"docs/{stem}.md"), md)):
        path.write_text(text)
    print("\n" + md, flush=True)


def _pair(quality: dict) -> str:
    return f"{quality['mrr']:.3f} / {quality['recall@5']:.3f}"


def _summary(report: dict) -> dict:
    return {k: v for k, v in report.items() if k in ("n", "mrr", "recall@1", "recall@5")}


if __name__ == "__main__":
    main()
