"""Distillation with controls (issue "Distillation that helps"): every LLM-supervised method on
the demo's HotpotQA split, each beside a control trained on its own targets shuffled within each
question, the teacher's own ranking of the training questions, and the base-anchored remedy.

    raglign demo --output runs/demo                          # first: split, labels, RADIO, PDist
    python benchmarks/distill.py --demo runs/demo --out runs/distill [--methods pdist,radio,...]

Stages (each skipped when its output exists, so a re-run resumes):

1. **Teachers.** Labels on the training questions: the demo's (``answer_logprob``,
   ``rationale_score``, SmolLM2-135M) plus ``loo_logprob`` and ``attention`` labelled here; the
   ``--teachers`` after the first label ``answer_logprob`` (PDist) with that generator. Each
   label job's signal evaluation (rows with gold paragraphs) is the teacher's own ranking.
2. **Training rows** per method (``raglign mine``), and each method's **control**: the same rows
   with the per-document values (``target``, ``lm_logprob`` or ``labels``) permuted within each
   question by a seeded shuffle. A student no better than its control learned nothing from its
   teacher.
3. **Remedy chosen on validation.** A ``raglign tune`` grid over ``anchor`` (the weight of
   KL(p_base || p_R), the frozen base's own distribution) and the student temperature, PDist on
   70 % of the training questions, judged on validation MRR over the other 30 % (held out by the
   id hash, never the test questions).
4. **Students**: per method ``plain`` (the demo's settings), ``control`` and ``anchored`` (the
   chosen anchor and temperature), all from the demo's base with its schedule (2 epochs, batch
   8, lr 6e-5, MiniLM bi-encoder).
5. **Held-out evaluation** (``raglign eval``, reranker setting, the 33 test questions) with paired
   bootstrap differences against the base and against the method's control, and what each
   student did to the base's ranking: the spread of its logits (score / T) per question, how
   often the base's top document lost first place, and the Kendall tau to the base's order.

Results: ``OUT/distill.json``, ``OUT/distill.md`` (copied with ``--json`` / ``--md``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import log, write_once  # noqa: E402  (benchmarks/ is not a package)

HEADLINE = ["mrr", "recall@5"]
METRICS = ["recall@1", "recall@5", "ndcg@5", "mrr"]
# method -> (objective, training rows, the per-document field the control shuffles, the
# signal whose evaluation is the teacher's own ranking)
METHODS = {
    "pdist": ("kl", "pdist", "target", "answer_logprob"),
    "loop": ("kl", "loop", "target", "loo_logprob"),
    "adist": ("kl", "adist", "target", "attention"),
    "emdr": ("emdr", "lm", "lm_logprob", "answer_logprob"),
    "replug": ("replug", "lm", "lm_logprob", "answer_logprob"),
    "radio": ("infonce", "radio", "labels", "rationale_score"),
}


# ------------------------------------------------------------------------------ teachers
def teacher_labels(demo: Path, out: Path, demo_cfg: dict, args) -> dict[str, Path]:
    """Labelled training questions per teacher: ``{generator: labelled dir}``; the first
    teacher's also under ``"extra"`` (loo_logprob, attention)."""
    from raglign.pipeline.label import LabelConfig, run_label

    train_dir = demo / "split" / "train"
    common = dict(input=str(train_dir), encoder=demo_cfg["encoder"], actors=args.actors,
                  shard_rows=args.shard_rows, batch_size=8, cpus_per_actor=1)
    jobs = {"extra": (args.teachers[0], ["loo_logprob", "attention"])}
    jobs.update({t: (t, ["answer_logprob"]) for t in args.teachers[1:]})
    labelled = {args.teachers[0]: demo / "labelled"}
    for key, (generator, signals) in jobs.items():
        path = out / "labelled" / key
        labelled[key] = path
        if (path / "_summary.json").exists():
            continue
        t = time.monotonic()
        run_label(LabelConfig(output=str(path), generator=generator, signals=signals,
                              loo={"k": args.loo_k}, **common), progress=log)
        log(f"labels {key} ({generator}: {', '.join(signals)}): {time.monotonic() - t:.0f}s")
    return labelled


def training_rows(demo: Path, out: Path, demo_cfg: dict, labelled: dict, args) -> dict[str, Path]:
    """``{rows name: mined dir}``: pdist / radio from the demo, the others mined here; a second
    teacher's PDist rows as ``pdist@<teacher>``."""
    from raglign.pipeline.mine import MineConfig, run_mine

    t_pdist = demo_cfg["pdist_temperature"]
    rows = {"pdist": demo / "mined" / "pdist", "radio": demo / "mined" / "radio"}
    plans = {"loop": dict(input=labelled["extra"], targets="loop", k=args.loo_k,
                          temperature=t_pdist),
             "adist": dict(input=labelled["extra"], targets="adist", temperature=t_pdist),
             "lm": dict(input=labelled[args.teachers[0]], lm_logprobs=True)}
    plans.update({f"pdist@{t}": dict(input=labelled[t], targets="pdist", temperature=t_pdist)
                  for t in args.teachers[1:]})
    for name, plan in plans.items():
        rows[name] = out / "mined" / name
        if not (rows[name] / "part-00000.parquet").exists():
            run_mine(MineConfig(output=str(rows[name]), **{**plan, "input": str(plan["input"])}),
                     progress=log)
    return rows


def shuffled(rows: list[dict], field: str, seed: int = 0) -> list[dict]:
    """The control: each row's ``field`` values permuted among its documents, by a generator
    seeded per question id (the same control on every run); documents and questions unchanged."""
    import numpy as np

    out = []
    for r in rows:
        digest = hashlib.sha256(f"{seed}:{r['id']}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        values = list(r[field])
        out.append({**r, field: [values[i] for i in rng.permutation(len(values))]})
    return out


def control_rows(rows: dict[str, Path], out: Path) -> dict[str, Path]:
    """A shuffled copy of every method's rows (``control/<rows name>``)."""
    from raglign.data.io import read_rows

    controls = {}
    for method, (_, name, field, _) in METHODS.items():
        controls[name] = write_once(lambda n=name, f=field: shuffled(read_rows(rows[n]), f),
                                    out / "control" / name)
    return controls


# ------------------------------------------------------------------------------ remedy
def choose_remedy(out: Path, demo_cfg: dict, rows: dict[str, Path], args) -> dict:
    """The (anchor, temperature) with the best validation MRR of a PDist ``raglign tune`` grid."""
    from raglign.pipeline.tune import run_tune
    from raglign.pipeline.tune_config import TuneJobConfig

    sweep = out / "tune_pdist_anchor"
    best = sweep / "best.json"
    if not best.exists():
        train = {"data": str(rows["pdist"]), "output": str(sweep / "unused"),
                 "model": demo_cfg["reranker"], "kind": demo_cfg["reranker_kind"],
                 "objective": "kl", **demo_cfg["training"], "num_workers": 1,
                 "validation": {"fraction": 0.3}}
        run_tune(TuneJobConfig(
            train=train, output=str(sweep), search={"algorithm": "grid"}, metric="val_mrr",
            param_space={"train.anchor": {"grid": args.anchors},
                         "train.temperature": {"grid": args.temperatures}}), progress=log)
    chosen = json.loads(best.read_text())
    log(f"remedy chosen on validation: {chosen['values']} (val_mrr {chosen['value']:.3f})")
    return chosen


# ------------------------------------------------------------------------------ students
def students(out: Path, demo: Path, demo_cfg: dict, rows: dict, controls: dict, remedy: dict,
             args) -> dict[str, Path]:
    """Trained model directories: ``{run name: model dir}``; a run is named ``method``
    (``method@teacher`` for a later teacher) with ``.control`` / ``.anchored`` for the variants."""
    from raglign.pipeline.train import train
    from raglign.training_config import TrainConfig

    anchored = {k.split(".", 1)[1]: v for k, v in remedy["values"].items()}
    runs: dict[str, tuple[str, Path, dict]] = {}
    for method in args.methods:
        objective, name, _, _ = METHODS[method]
        runs[method] = (objective, rows[name], {})
        runs[f"{method}.control"] = (objective, controls[name], {})
        runs[f"{method}.anchored"] = (objective, rows[name], anchored)
    for teacher in args.teachers[1:]:
        runs[f"pdist@{teacher}"] = ("kl", rows[f"pdist@{teacher}"], {})
        runs[f"pdist@{teacher}.anchored"] = ("kl", rows[f"pdist@{teacher}"], anchored)
    models = {}
    for run, (objective, data, extra) in runs.items():
        demo_model = demo / "train" / run / "model"  # the demo's own pdist / radio students
        models[run] = demo_model if demo_model.exists() else out / "train" / run / "model"
        if models[run].exists():
            continue
        t = time.monotonic()
        train(TrainConfig(data=str(data), output=str(out / "train" / run),
                          model=demo_cfg["reranker"], kind=demo_cfg["reranker_kind"],
                          objective=objective, run_name=f"distill-{run}",
                          **{**demo_cfg["training"], "num_workers": args.train_workers},
                          **extra))
        log(f"train {run}: {time.monotonic() - t:.0f}s")
    return models


def evaluate_runs(out: Path, demo: Path, demo_cfg: dict, models: dict[str, Path],
                  split: str) -> dict[str, dict]:
    """``raglign eval`` reports (reranker setting) of the base and every student on ``split``."""
    from raglign.pipeline.evaluate import EvalConfig, evaluate

    reports = {}
    for name, model in {"base": demo_cfg["reranker"], **models}.items():
        path = out / "eval" / split / f"{name}.json"
        if not path.exists():
            evaluate(EvalConfig(data=str(demo / "split" / split), output=str(path), name=name,
                                reranker=str(model), reranker_kind=demo_cfg["reranker_kind"],
                                k=demo_cfg["k"], generator=None))
        reports[name] = {**json.loads(path.read_text()), "_path": str(path)}
    return reports


def ranking_changes(demo: Path, demo_cfg: dict, models: dict[str, Path]) -> dict[str, dict]:
    """What each student did to the base's ranking of the test questions' candidates: the mean
    per-question std of its scores (cosine for a bi-encoder; divide by the score temperature for
    the logits the loss saw), the share of questions whose base top-1 is no longer first, and the
    mean Kendall tau between the two orders."""
    import numpy as np
    import torch

    from raglign.data.io import read_rows
    from raglign.models.rerankers import doc_text, load_reranker

    rows = read_rows(demo / "split" / "test")

    def scores(model: str) -> list[np.ndarray]:
        reranker = load_reranker(model, kind=demo_cfg["reranker_kind"],
                                 max_length=demo_cfg["training"]["max_length"])
        with torch.no_grad():
            return [np.asarray(reranker.score(r["question"], [doc_text(c.get("title"), c["text"])
                                                              for c in r["candidates"]]))
                    for r in rows]

    def kendall(a: np.ndarray, b: np.ndarray) -> float:
        i, j = np.triu_indices(len(a), 1)
        return float(np.mean(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])))

    base = scores(demo_cfg["reranker"])
    out = {"base": {"score_std": float(np.mean([s.std() for s in base])),
                    "top1_changed": 0.0, "kendall_tau": 1.0}}
    for name, model in models.items():
        student = scores(str(model))
        out[name] = {
            "score_std": float(np.mean([s.std() for s in student])),
            "top1_changed": float(np.mean([s.argmax() != b.argmax()
                                           for s, b in zip(student, base)])),
            "kendall_tau": float(np.mean([kendall(s, b) for s, b in zip(student, base)]))}
    return out


# ------------------------------------------------------------------------------ report
def teacher_quality(labelled: dict[str, Path], args) -> dict[str, dict]:
    """The teachers' own ranking of the training questions (their label jobs' signal eval)."""
    out = {}
    first = json.loads((labelled[args.teachers[0]] / "_signal_eval.json").read_text())["signals"]
    extra = json.loads((labelled["extra"] / "_signal_eval.json").read_text())["signals"]
    out["retrieval"] = {m: first["retrieval"][m] for m in HEADLINE}
    for method, (_, _, _, signal) in METHODS.items():
        table = extra if signal in extra else first
        out[method] = {m: table[signal][m] for m in HEADLINE}
    for teacher in args.teachers[1:]:
        own = json.loads((labelled[teacher] / "_signal_eval.json").read_text())["signals"]
        out[f"pdist@{teacher}"] = {m: own["answer_logprob"][m] for m in HEADLINE}
    return out


def differences(reports: dict[str, dict], against: str, runs: list[str],
                n_boot: int) -> dict[str, dict]:
    from raglign.evaluate.report import paired_differences, per_row_metrics

    names = [against] + runs
    return paired_differences([reports[n] for n in names],
                              [per_row_metrics(reports[n]["_path"]) for n in names], METRICS,
                              n_boot)


def _diff(d: dict | None, metric: str) -> str:
    if not d or metric not in d:
        return "–"
    lo, hi = d[metric]["diff_ci"]
    mark = " ▲" if lo > 0 else " ▼" if hi < 0 else ""
    return f"{d[metric]['diff']:+.3f} [{lo:+.2f}, {hi:+.2f}]{mark}"


def markdown(result: dict) -> str:
    teach, test, train = result["teachers"], result["test"], result["train_split"]
    lines = ["Held-out questions (n = %d), reranker setting; differences are paired bootstrap 95 %% "
             "CIs (▲/▼: the interval excludes 0). Teacher: its own MRR / Recall@5 on the "
             "training questions (base reranker there: MRR %.3f, Recall@5 %.3f)."
             % (test["base"]["n"], train["base"]["mrr"], train["base"]["recall@5"]), "",
             "| run | teacher MRR / R@5 (train) | MRR | Recall@5 | MRR − base | R@5 − base | "
             "MRR − control | R@5 − control | score std | top-1 changed | Kendall τ to base |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run, report in test.items():
        t = teach.get(run.split(".")[0])
        vs_base = result["vs_base"].get(run)
        vs_control = result["vs_control"].get(run)
        change = result["ranking_changes"].get(run, {})
        lines.append(
            f"| {run} | {f'{t[HEADLINE[0]]:.3f} / {t[HEADLINE[1]]:.3f}' if t else '–'} | "
            f"{report['mrr']:.3f} | {report['recall@5']:.3f} | {_diff(vs_base, 'mrr')} | "
            f"{_diff(vs_base, 'recall@5')} | {_diff(vs_control, 'mrr')} | "
            f"{_diff(vs_control, 'recall@5')} | {change.get('score_std', float('nan')):.3f} | "
            f"{change.get('top1_changed', float('nan')):.2f} | "
            f"{change.get('kendall_tau', float('nan')):.2f} |")
    remedy = result["remedy"]
    lines += ["", f"Remedy chosen on validation (PDist, 30 % of the training questions): "
              f"{remedy['values']}, val MRR {remedy['value']:.3f} (the base: "
              f"{remedy['base_value']:.3f}); the grid's results are in "
              f"`{remedy['sweep']}/results.csv`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", default="runs/demo", help="a finished `raglign demo` run directory")
    ap.add_argument("--out", default="runs/distill")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--teachers", default="smollm2-135m,gemma3-270m",
                    help="the first is the demo's generator (all methods); the others label "
                         "PDist's answer_logprob (the remedy against a better teacher)")
    ap.add_argument("--anchors", default="0,0.5,0.8")
    ap.add_argument("--temperatures", default="0.02,0.1")
    ap.add_argument("--loo-k", type=int, default=5)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--shard-rows", type=int, default=17)
    ap.add_argument("--train-workers", type=int, default=1,
                    help="Ray Train workers (global batches: speed only)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", default="docs/distill_hotpotqa.json")
    ap.add_argument("--md", default="docs/distill_hotpotqa.md")
    args = ap.parse_args()
    args.methods = args.methods.split(",")
    args.teachers = args.teachers.split(",")
    args.anchors = [float(a) for a in args.anchors.split(",")]
    args.temperatures = [float(t) for t in args.temperatures.split(",")]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        ap.error(f"--methods: unknown {unknown}; known {list(METHODS)}")

    from raglign.ray_session import ray_session

    demo, out = Path(args.demo), Path(args.out)
    demo_cfg = json.loads((demo / "demo_config.json").read_text())
    if demo_cfg["generator"] != args.teachers[0]:
        ap.error(f"--teachers must start with the demo's generator {demo_cfg['generator']}")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with ray_session():
        labelled = teacher_labels(demo, out, demo_cfg, args)
        rows = training_rows(demo, out, demo_cfg, labelled, args)
        controls = control_rows(rows, out)
        remedy = choose_remedy(out, demo_cfg, rows, args)
        models = students(out, demo, demo_cfg, rows, controls, remedy, args)
        test = evaluate_runs(out, demo, demo_cfg, models, "test")
        train_split = evaluate_runs(out, demo, demo_cfg, {}, "train")
    runs = list(models)
    result = {
        "demo": str(demo), "teachers": teacher_quality(labelled, args),
        "remedy": {**remedy, "sweep": str(out / "tune_pdist_anchor")},
        "test": {n: {k: v for k, v in r.items() if k == "n" or k.split("_ci")[0] in METRICS}
                 for n, r in test.items()},
        "train_split": {"base": {m: train_split["base"][m] for m in HEADLINE}},
        "vs_base": differences(test, "base", runs, args.n_boot),
        "vs_control": {run: differences(test, f"{run.split('.')[0]}.control", [run],
                                        args.n_boot)[run]
                       for run in runs if f"{run.split('.')[0]}.control" in test
                       and not run.endswith(".control")},
        "ranking_changes": ranking_changes(demo, demo_cfg, models),
        "seconds": round(time.monotonic() - started, 1)}
    (out / "distill.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (out / "distill.md").write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.md:
        Path(args.md).write_text(table)
    print("\n" + table)
    log(f"finished in {(time.monotonic() - started) / 60:.1f} min -> {out / 'distill.md'}")


if __name__ == "__main__":
    main()
