"""``raglign models``: list the packaged offline models, convert them into the local cache, and
merge a trained reranker's weights with its starting model's."""

from __future__ import annotations

from raglign.models.registry import PACKAGED, cache_dir, resolve_model


def _list(args) -> int:
    print(f"cache: {cache_dir()}")
    for name, entry in PACKAGED.items():
        try:
            entry.locate()
            state = "installed"
        except Exception:  # noqa: BLE001 - any failure to locate means "not installed"
            state = f"not installed ({entry.install})"
        print(f"{name:14s} {entry.kind:10s} {entry.hub_id:40s} {state}")
    return 0


def _prepare(args) -> int:
    for name in args.names:
        print(f"{name} -> {resolve_model(name)}")
    return 0


def _merge(args) -> int:
    """Base, kind and seed default to the training run's own (``merge_trained``), so
    ``raglign models merge RUN/model OUT --base-weight 0.5`` needs nothing else for a model
    ``raglign train`` wrote."""
    from raglign.training.merge import merge_trained

    base = merge_trained(args.trained, args.output, args.base_weight, base=args.base,
                         kind=args.kind, seed=args.seed)
    print(f"{args.output}: {1 - args.base_weight:g} x {args.trained} + "
          f"{args.base_weight:g} x {base}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("models", help="list packaged offline models; prepare their cached copies")
    s = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    s.add_parser("list", help="show short names, upstream hub ids and whether each is installed"
                 ).set_defaults(func=_list)
    f = s.add_parser("prepare", help="convert packaged GGUF models once into the bf16 cache")
    f.add_argument("names", nargs="+", help="short names (smollm2-135m, gemma3-270m, minilm-l6)")
    f.set_defaults(func=_prepare)
    m = s.add_parser("merge", help="interpolate a trained reranker's weights toward its starting "
                     "model's (WiSE-FT weight-space ensembling)")
    m.add_argument("trained", help="the trained model directory (a train run's model/)")
    m.add_argument("output", help="directory for the merged model")
    m.add_argument("--base-weight", type=float, required=True,
                   help="w in (1 - w) x trained + w x base; 0 keeps the trained model")
    m.add_argument("--base", help="the starting model (default: the run's train_config.yaml)")
    m.add_argument("--kind", choices=("bi", "cross"), help="default: the run's")
    m.add_argument("--seed", type=int, help="the run's seed (a new cross-encoder head); "
                   "default: the run's")
    m.set_defaults(func=_merge)
