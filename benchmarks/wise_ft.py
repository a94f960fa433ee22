"""Distilled students merged back toward their base in weight space (WiSE-FT), the merge weight
chosen on NQ's validation questions and then applied, unchanged, to the HotpotQA demo
(issue "Distillation that helps").

The anchor (docs/distillation.md) limits what the targets ask of a student on its training
questions; the held-out questions are decided by how far the weights travel. ``raglign models
merge`` exports ``(1 − w) · θ_student + w · θ_base`` (:mod:`raglign.training.merge`). This
benchmark takes the students the two earlier benchmarks trained, merges each at ``w`` 0.25 /
0.5 / 0.75, and evaluates every merge with ``raglign eval`` (reranker setting):

* **NQ** (``benchmarks/distill_nq.py``'s run: 216 training, 128 validation, 156 test
  questions): every bi-encoder student of its grid x every ``w`` (``w = 0`` is the student,
  ``w = 1`` the base). The choice -- student and ``w`` -- is the best validation MRR; the test
  reports it once, with paired bootstrap intervals against the base and against the student it
  was merged from.
* **HotpotQA** (a ``raglign demo`` output: 67 training, 33 held-out questions): the demo's
  students merged at the ``w`` NQ validation chose, measured on the held-out questions against
  the base. Every other ``w`` is listed too, marked as not a choice: 33 questions choose nothing.
  Each ``kl`` student also gets its shuffled-target control (``distill.py``'s: the targets
  permuted within each question), trained from the student's own recorded config and exported
  unmerged, then merged at the chosen ``w`` like the student: a student no better than its
  control learned nothing from its teacher.

    python benchmarks/distill_nq.py --retrieved runs/nq/retrieved --out runs/distill_nq
    raglign demo --output runs/demo_geo
    python benchmarks/wise_ft.py --nq runs/distill_nq --demo runs/demo_geo

Merged models and their evaluations go beside the runs they come from (``merged/``, ``eval/``),
so a re-run only evaluates what is missing. Results: ``docs/wise_ft.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from distill import _diff, differences, evaluate_runs  # noqa: E402
from distill_nq import evaluate as evaluate_nq  # noqa: E402
from distill_nq import table  # noqa: E402

WEIGHTS = (0.25, 0.5, 0.75)


def log(msg: str) -> None:
    print(f"[wise_ft {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_config(model: Path) -> dict:
    """The train job's recorded config beside an exported ``model/`` directory."""
    return yaml.safe_load((model.parent / "train_config.yaml").read_text())


def students(train: Path) -> dict[str, Path]:
    """The bi-encoder students under a run's ``train/`` (controls left out: they are not
    candidates for a choice)."""
    out = {}
    for run in sorted(train.iterdir()):
        model = run / "model"
        if (model.exists() and (run / "train_config.yaml").exists()
                and not run.name.startswith("control") and run_config(model)["kind"] == "bi"):
            out[run.name] = model
    return out


def merged(root: Path, name: str, model: Path, w: float) -> Path:
    """``name`` merged at base weight ``w`` (made unless it exists), named ``name-w<w>``."""
    from raglign.training.merge import merge_trained

    path = root / "merged" / f"{name}-w{w:g}" / "model"
    if not path.exists():
        merge_trained(str(model), str(path), w)
    return path


def control(out: Path, name: str, model: Path) -> Path:
    """``name``'s shuffled-target control: the student's recorded ``train_config.yaml`` on its
    rows with the targets permuted within each question, exported unmerged (trained unless it
    exists)."""
    from distill import control_rows

    from raglign.pipeline.train import train
    from raglign.training_config import TrainConfig

    path = out / "train" / f"control-{name}" / "model"
    if not path.exists():
        cfg = run_config(model)
        rows = control_rows(Path(cfg["data"]), "target", out / "control_rows" / name)
        t = time.monotonic()
        train(TrainConfig(**{**cfg, "data": str(rows), "output": str(path.parent),
                             "run_name": f"wise-ft-control-{name}", "base_merge": 0.0}))
        log(f"train control-{name}: {time.monotonic() - t:.0f}s")
    return path


def with_merges(root: Path, found: dict[str, Path], weights=WEIGHTS) -> dict[str, Path]:
    models = {}
    for name, model in found.items():
        models[name] = model
        models.update({f"{name}-w{w:g}": merged(root, name, model, w) for w in weights})
    return models


def choose(val: dict[str, dict]) -> str:
    """The best validation MRR among the students and their merges (the base included: a merge
    that does not beat it is not chosen); ties go to the first listed."""
    return max(val, key=lambda n: val[n]["mrr"])


def source(name: str) -> str:
    """The student a merge was made from (``T0.1-a0-w0.5`` -> ``T0.1-a0``)."""
    return name.rsplit("-w", 1)[0] if "-w" in name else name


def weight(name: str) -> float:
    return float(name.rsplit("-w", 1)[1]) if "-w" in name else (1.0 if name == "base" else 0.0)


def nq_part(run: Path, args) -> dict:
    found = students(run / "train")
    models = with_merges(run, found)
    ns = argparse.Namespace(kind="bi", k=args.k, actors=args.actors)
    val = evaluate_nq(run, run / "split" / "val", "val", models, ns)
    test = evaluate_nq(run, run / "split" / "test", "test", models, ns)
    chosen = choose(val)
    log(f"NQ: chosen on validation {chosen} (MRR {val[chosen]['mrr']:.3f})")
    names = list(models)
    result = {"val": _summaries(val), "test": _summaries(test), "chosen": chosen,
              "val_vs_base": differences(val, "base", names, args.n_boot),
              "test_vs_base": differences(test, "base", names, args.n_boot),
              "test_vs_student": {n: differences(test, source(n), [n], args.n_boot)[n]
                                  for n in names if n != source(n)}}
    return result


def hotpotqa_part(demo: Path, out: Path, w: float, args) -> dict:
    demo_cfg = json.loads((demo / "demo_config.json").read_text())
    found = students(demo / "train")
    models = with_merges(out, found)
    kl = [n for n, m in found.items()
          if run_config(m)["objective"] == "kl"]
    merged_w = f"-w{w:g}" if 0 < w < 1 else ""
    for name in kl:
        models.update(with_merges(out, {f"control-{name}": control(out, name, found[name])},
                                  [w] if merged_w else []))
    test = evaluate_runs(out, demo, demo_cfg, models, "test")
    names = list(models)
    return {"demo": str(demo), "weight": w, "test": _summaries(test),
            "test_vs_base": differences(test, "base", names, args.n_boot),
            "test_vs_student": {n: differences(test, source(n), [n], args.n_boot)[n]
                                for n in names if n != source(n)},
            "test_vs_control": {
                s + m: differences(test, f"control-{s}{m}", [s + m], args.n_boot)[s + m]
                for s in kl for m in dict.fromkeys(["", merged_w])}}


def _summaries(reports: dict[str, dict]) -> dict[str, dict]:
    return {n: {k: v for k, v in r.items() if k in ("n", "mrr", "recall@1", "recall@5")}
            for n, r in reports.items()}


def _rows(part: dict, split: str, mark: str | None = None) -> list[str]:
    """The part's table: every model against the base and against the student it was merged
    from (``-w<w>`` in a name is its base weight)."""
    return table(part[split], part[f"{split}_vs_base"], part.get(f"{split}_vs_student", {}),
                 "its student", mark)


def markdown(result: dict) -> str:
    nq, hq = result["nq"], result["hotpotqa"]
    lines = ["Students merged toward their base in weight space, `(1 − w) · student + w · base` "
             "(`raglign models merge`): a run named `S-w<w>` is student `S` merged at base weight w, `S` "
             "alone the student (w 0). Differences: paired "
             "bootstrap 95 % CIs over questions (▲/▼: the interval excludes 0).", "",
             f"**NQ validation** (n = {nq['val']['base']['n']}); chosen: `{nq['chosen']}`.", ""]
    lines += _rows({"val": nq["val"], "val_vs_base": nq["val_vs_base"]}, "val", nq["chosen"])
    lines += ["", f"**NQ test** (n = {nq['test']['base']['n']}).", ""]
    lines += _rows(nq, "test", nq["chosen"])
    lines += ["", f"**HotpotQA held-out** (n = {hq['test']['base']['n']}, `{hq['demo']}`): "
              f"w = {hq['weight']:g} is NQ validation's choice; the other weights are shown, "
              "not chosen.", ""]
    lines += _rows(hq, "test", None)
    lines += ["", "**HotpotQA, each KL student against its shuffled-target control** (the "
              "same recipe on the targets permuted within each question; merged ones against "
              "the control merged at the same w):", "", "| student | MRR − control | "
              "R@5 − control |", "|---|---:|---:|"]
    lines += [f"| {n} | {_diff(d, 'mrr')} | {_diff(d, 'recall@5')} |"
              for n, d in hq["test_vs_control"].items()]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Test MRR against w, one line per student: the interpolation path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (title, part) in zip(axes, (("NQ test", result["nq"]),
                                        ("HotpotQA held-out", result["hotpotqa"]))):
        test = part["test"]
        for name in [n for n in test if n != "base" and source(n) == n
                     and not n.startswith("control-")]:
            ws = [0.0] + [w for w in WEIGHTS if f"{name}-w{w:g}" in test] + [1.0]
            ys = ([test[name]["mrr"]] + [test[f"{name}-w{w:g}"]["mrr"] for w in ws[1:-1]]
                  + [test["base"]["mrr"]])
            ax.plot(ws, ys, marker="o", label=name)
        ax.axhline(test["base"]["mrr"], color="grey", linestyle="--", label="base")
        ax.set(title=title, xlabel="w (weight of the base)", ylabel="MRR")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nq", default="runs/distill_nq", help="benchmarks/distill_nq.py's --out")
    ap.add_argument("--demo", default="runs/demo_geo", help="a raglign demo's --output")
    ap.add_argument("--out", default="runs/wise_ft", help="HotpotQA merges and evaluations")
    ap.add_argument("--k", type=int, default=10, help="NQ candidates reranked (eval's k1)")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--docs", default="docs", help="where wise_ft.{json,md,png} go")
    args = ap.parse_args()

    from raglign.ray_session import ray_session

    with ray_session():
        nq = nq_part(Path(args.nq), args)
        hq = hotpotqa_part(Path(args.demo), Path(args.out), weight(nq["chosen"]), args)
    result = {"nq": nq, "hotpotqa": hq}
    docs = Path(args.docs)
    (docs / "wise_ft.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (docs / "wise_ft.md").write_text(md)
    plot(result, docs / "wise_ft.png")
    print("\n" + md, flush=True)


if __name__ == "__main__":
    main()
