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

from quality import write_once  # noqa: E402  (benchmarks/ is not a package)

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


def log(msg: str) -> None:
    print(f"[distill {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------ teachers
class Teachers:
    """Labels and training rows, made when a method first needs them (each stage is skipped
    when its output exists): the demo's labels (``answer_logprob``, ``rationale_score``) and its
    PDist / RADIO rows; ``loo_logprob`` + ``attention`` (LOOP, ADist) labelled here in one job;
    a later teacher's ``answer_logprob`` for its PDist rows."""

    def __init__(self, demo: Path, out: Path, demo_cfg: dict, args):
        self.demo, self.out, self.cfg, self.args = demo, out, demo_cfg, args
        self.labelled = {args.teachers[0]: demo / "labelled"}

    def label(self, key: str, generator: str, signals: list[str]) -> Path:
        from raglign.pipeline.label import LabelConfig, run_label

        path = self.out / "labelled" / key
        self.labelled[key] = path
        if not (path / "_summary.json").exists():
            t = time.monotonic()
            run_label(LabelConfig(
                input=str(self.demo / "split" / "train"), output=str(path), generator=generator,
                signals=signals, encoder=self.cfg["encoder"], loo={"k": self.args.loo_k},
                actors=self.args.actors, shard_rows=self.args.shard_rows, batch_size=8,
                cpus_per_actor=1), progress=log)
            log(f"labels {key} ({generator}: {', '.join(signals)}): {time.monotonic() - t:.0f}s")
        return path

    def labelled_for(self, rows_name: str) -> Path:
        """The label job a method's rows come from."""
        if rows_name in ("loop", "adist"):
            return self.label("extra", self.args.teachers[0], ["loo_logprob", "attention"])
        if "@" in rows_name:
            teacher = rows_name.split("@", 1)[1]
            return self.label(teacher, teacher, ["answer_logprob"])
        return self.labelled[self.args.teachers[0]]

    def rows(self, rows_name: str) -> Path:
        """The mined training rows called ``rows_name`` (see :data:`METHODS`)."""
        from raglign.pipeline.mine import MineConfig, run_mine

        if rows_name in ("pdist", "radio"):
            return self.demo / "mined" / rows_name
        path = self.out / "mined" / rows_name
        if (path / "part-00000.parquet").exists():
            return path
        t_pdist = self.cfg["pdist_temperature"]
        plan = {"loop": dict(targets="loop", k=self.args.loo_k, temperature=t_pdist),
                "adist": dict(targets="adist", temperature=t_pdist),
                "lm": dict(lm_logprobs=True)}.get(rows_name,
                                                  dict(targets="pdist", temperature=t_pdist))
        run_mine(MineConfig(input=str(self.labelled_for(rows_name)), output=str(path), **plan),
                 progress=log)
        return path


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


def control_rows(rows: Path, field: str, out: Path) -> Path:
    """A shuffled copy of ``rows`` (the method's control)."""
    from raglign.data.io import read_rows

    return write_once(lambda: shuffled(read_rows(rows), field), out)


# ------------------------------------------------------------------------------ remedy
def choose_remedy(out: Path, demo: Path, demo_cfg: dict, pdist_rows: Path, args) -> dict:
    """The (anchor, temperature) with the best validation MRR of a PDist ``raglign tune`` grid."""
    from raglign.pipeline.tune import run_tune
    from raglign.pipeline.tune_config import TuneJobConfig

    sweep = out / ("tune_pdist_anchor-" + "_".join(map(str, args.anchors)) + "-temperature-"
                   + "_".join(map(str, args.temperatures)))  # a new grid is a new sweep
    best = sweep / "best.json"
    if not best.exists():
        train = {"data": str(pdist_rows), "output": str(sweep / "unused"),
                 "model": demo_cfg["reranker"], "kind": demo_cfg["reranker_kind"],
                 "objective": "kl", **demo_cfg["training"], "num_workers": 1,
                 "anchor_mix": "arithmetic", "base_merge": 0.0,
                 "validation": {"fraction": 0.3, "data": str(demo / "split" / "train")}}
        run_tune(TuneJobConfig(
            train=train, output=str(sweep), search={"algorithm": "grid"}, metric="val_mrr",
            max_concurrent_trials=args.trials_at_once, max_failures=2,
            param_space={"train.anchor": {"grid": args.anchors},
                         "train.temperature": {"grid": args.temperatures}}), progress=log)
    chosen = {**json.loads(best.read_text()), "sweep": sweep.name}
    log(f"remedy chosen on validation: {chosen['values']} (val_mrr {chosen['value']:.3f})")
    return chosen


# ------------------------------------------------------------------------------ students
def method_runs(method: str, teachers: Teachers, out: Path, remedy: dict) -> dict[str, tuple]:
    """A method's runs, ``{run name: (objective, rows, extra train settings)}``: ``method``
    (the demo's settings), ``method.control`` and ``method.anchored`` (the remedy); a later
    teacher's PDist is ``pdist@<teacher>`` with its ``.anchored`` run."""
    anchored = {k.split(".", 1)[1]: v for k, v in remedy["values"].items()}
    objective, rows_name, field, _ = METHODS[method.split("@")[0]]
    if "@" in method:
        rows_name = method
    rows = teachers.rows(rows_name)
    runs = {method: (objective, rows, {})}
    if "@" not in method:
        runs[f"{method}.control"] = (objective, control_rows(rows, field, out / "control" /
                                                             rows_name), {})
    if anchored.get("anchor"):  # validation chose an anchor: else the plain run is the remedy's
        runs[f"{method}.anchored"] = (objective, rows, anchored)
    return runs


def _unanchored(run: Path) -> bool:
    """Whether a training run under ``run`` exists and trained without the base anchor."""
    import yaml

    from raglign.training_config import TrainConfig

    saved = run / "train_config.yaml"
    if not (run / "model").exists() or not saved.exists():
        return False
    cfg = yaml.safe_load(saved.read_text())
    # the anchor in effect, by TrainConfig's own rule; runs older than the anchor had none
    return TrainConfig(data="-", output="-", kind=cfg["kind"], objective=cfg["objective"],
                       anchor=cfg.get("anchor", 0.0)).anchor_weight == 0


def train_runs(runs: dict[str, tuple], out: Path, demo: Path, demo_cfg: dict,
               args) -> dict[str, Path]:
    """Trained model directories, ``{run name: model dir}``; the demo's own plain PDist and
    RADIO students are reused when they trained without the anchor (older demos; the demo now
    anchors PDist by default)."""
    from raglign.pipeline.train import train
    from raglign.training_config import TrainConfig

    models = {}
    for run, (objective, data, extra) in runs.items():
        # a remedy's run is named by its settings: another remedy chosen later trains anew
        trained = out / "train" / "-".join([run] + [f"{k}{v}" for k, v in sorted(extra.items())])
        reused = demo / "train" / run  # the demo's student, when it trained unanchored
        models[run] = reused / "model" if not extra and _unanchored(reused) else trained / "model"
        if models[run].exists():
            continue
        t = time.monotonic()
        train(TrainConfig(data=str(data), output=str(trained),
                          model=demo_cfg["reranker"], kind=demo_cfg["reranker_kind"],
                          objective=objective, run_name=f"distill-{run}",
                          # plain and control unanchored, whatever the default; anchored runs
                          # mix arithmetically and export unmerged, as docs/distillation.md
                          # points 1-9 measured (the geometric anchor and the base merge came
                          # later: benchmarks/distill_nq.py, benchmarks/wise_ft.py)
                          **{**demo_cfg["training"], "num_workers": args.train_workers,
                             "anchor": 0.0, "anchor_mix": "arithmetic", "base_merge": 0.0,
                             **extra}))
        log(f"train {run}: {time.monotonic() - t:.0f}s")
    return models


def evaluate_runs(out: Path, demo: Path, demo_cfg: dict, models: dict[str, Path],
                  split: str) -> dict[str, dict]:
    """``raglign eval`` reports (reranker setting) of the base and every student on ``split``."""
    from raglign.pipeline.evaluate import EvalConfig, evaluate

    reports = {}
    for name, model in {"base": demo_cfg["reranker"], **models}.items():
        path = out / "eval" / split / f"{Path(model).parent.name if name != 'base' else name}.json"
        if not path.exists():
            evaluate(EvalConfig(data=str(demo / "split" / split), output=str(path), name=name,
                                reranker=str(model), reranker_kind=demo_cfg["reranker_kind"],
                                k=demo_cfg["k"], generator=None))
        reports[name] = {**json.loads(path.read_text()), "_path": str(path)}
    return reports


_SCORES: dict[str, list] = {}  # model -> its scores of the test questions' candidates


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
        if model not in _SCORES:  # the report is rewritten per method: score each model once
            reranker = load_reranker(model, kind=demo_cfg["reranker_kind"],
                                     max_length=demo_cfg["training"]["max_length"])
            with torch.no_grad():
                _SCORES[model] = [np.asarray(reranker.score(
                    r["question"], [doc_text(c.get("title"), c["text"]) for c in r["candidates"]]))
                    for r in rows]
        return _SCORES[model]

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
def teacher_quality(teachers: Teachers, runs: list[str]) -> dict[str, dict]:
    """The teachers' own ranking of the training questions (their label jobs' signal eval),
    for the methods among ``runs``, and the retrieval order's."""

    def evaluation(path: Path) -> dict:
        return json.loads((path / "_signal_eval.json").read_text())["signals"]

    first = evaluation(teachers.labelled[teachers.args.teachers[0]])
    out = {"retrieval": {m: first["retrieval"][m] for m in HEADLINE}}
    for method in {r.split(".")[0] for r in runs}:
        signal = METHODS[method.split("@")[0]][3]
        own = evaluation(teachers.labelled_for(method if "@" in method else
                                               METHODS[method][1]))
        out[method] = {m: own[signal][m] for m in HEADLINE}
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
    ap.add_argument("--methods", default="pdist,radio,emdr,replug,loop,adist",
                    help="in this order (those needing new labels last)")
    ap.add_argument("--teachers", default="smollm2-135m,gemma3-270m",
                    help="the first is the demo's generator (all methods); the others label "
                         "PDist's answer_logprob (the remedy against a better teacher)")
    ap.add_argument("--anchors", default="0,0.5,0.8")
    ap.add_argument("--temperatures", default="0.02,0.1")
    ap.add_argument("--loo-k", type=int, default=5)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--shard-rows", type=int, default=17)
    ap.add_argument("--trials-at-once", type=int, default=1,
                    help="concurrent tune trials (each holds a training worker's memory)")
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
    teachers = Teachers(demo, out, demo_cfg, args)
    models: dict[str, Path] = {}
    with ray_session():
        remedy = choose_remedy(out, demo, demo_cfg, teachers.rows("pdist"), args)
        train_split = evaluate_runs(out, demo, demo_cfg, {}, "train")
        # Method by method, the report rewritten after each: a long run reports what it has.
        for method in args.methods + [f"pdist@{t}" for t in args.teachers[1:]]:
            models.update(train_runs(method_runs(method, teachers, out, remedy), out, demo,
                                     demo_cfg, args))
            test = evaluate_runs(out, demo, demo_cfg, models, "test")
            report(out, args, demo, demo_cfg, teachers, remedy, models, test, train_split,
                   started)
    log(f"finished in {(time.monotonic() - started) / 60:.1f} min -> {out / 'distill.md'}")


def report(out: Path, args, demo: Path, demo_cfg: dict, teachers: Teachers, remedy: dict,
           models: dict[str, Path], test: dict, train_split: dict, started: float) -> None:
    """``distill.json`` / ``distill.md`` over the runs finished so far."""
    runs = list(models)
    result = {
        "demo": str(demo), "teachers": teacher_quality(teachers, runs),
        "remedy": {**{k: remedy[k] for k in ("metric", "value", "base_value", "values")},
                   "sweep": f"OUT/{remedy['sweep']}"},
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
    print("\n" + table, flush=True)


if __name__ == "__main__":
    main()
