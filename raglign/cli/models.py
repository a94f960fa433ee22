"""``raglign models``: list the packaged offline models and convert them into the local cache."""

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


def register(sub) -> None:
    p = sub.add_parser("models", help="list packaged offline models; prepare their cached copies")
    s = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    s.add_parser("list", help="show short names, upstream hub ids and whether each is installed"
                 ).set_defaults(func=_list)
    f = s.add_parser("prepare", help="convert packaged GGUF models once into the bf16 cache")
    f.add_argument("names", nargs="+", help="short names (smollm2-135m, gemma3-270m, minilm-l6)")
    f.set_defaults(func=_prepare)
