"""raglign.training.merge and ``raglign models merge``: weight-space interpolation of a trained
reranker with its starting model, checked tensor by tensor and by the merged model's scores."""

import numpy as np
import pytest
import torch
import yaml

from raglign.errors import ConfigError
from raglign.models.rerankers import load_reranker
from raglign.training.merge import interpolate_state, merge_models

QUERY, DOCS = "who wrote the opera", ["Verdi wrote Aida.", "Paris is in France.", "an opera"]


def test_interpolation_against_numpy_and_at_the_ends():
    g = torch.Generator().manual_seed(0)
    trained = {"w": torch.randn(3, 4, generator=g), "h": torch.randn(5, generator=g).bfloat16(),
               "ids": torch.arange(6)}
    base = {"w": torch.randn(3, 4, generator=g), "h": torch.randn(5, generator=g).bfloat16(),
            "ids": torch.arange(6)}
    m = interpolate_state(trained, base, 0.25)
    np.testing.assert_allclose(m["w"].numpy(), 0.75 * trained["w"].numpy()
                               + 0.25 * base["w"].numpy(), rtol=1e-6, atol=1e-7)
    ref = 0.75 * trained["h"].float().numpy() + 0.25 * base["h"].float().numpy()
    assert m["h"].dtype == torch.bfloat16
    np.testing.assert_allclose(m["h"].float().numpy(), ref, rtol=1e-2)
    assert torch.equal(m["ids"], trained["ids"])
    for w, ends in ((0.0, trained), (1.0, base)):
        out = interpolate_state(trained, base, w)
        assert all(torch.equal(out[k], ends[k]) for k in trained)


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("w"), "differ in parameters: w"),
    (lambda b: b.update(w=torch.zeros(4, 3)), r"parameter w: shape \(3, 4\) in the trained"),
    (lambda b: b.update(ids=torch.arange(1, 7)), "non-float tensor ids differs"),
])
def test_models_that_do_not_match_are_refused(change, message):
    trained = {"w": torch.ones(3, 4), "ids": torch.arange(6)}
    base = {k: v.clone() for k, v in trained.items()}
    change(base)
    with pytest.raises(ConfigError, match=message):
        interpolate_state(trained, base, 0.5)
    with pytest.raises(ConfigError, match=r"base_weight must lie in \[0, 1\]"):
        interpolate_state(trained, trained, 1.5)


def _perturbed(reranker, path, seed: int = 1):
    """``reranker`` with every float parameter moved, saved to ``path``: a stand-in student."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in reranker.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    reranker.save(path)
    return reranker


def test_bi_encoder_merge_is_the_lerp_and_its_ends_score_as_the_models(tiny_bert_dir, tmp_path):
    base = load_reranker(str(tiny_bert_dir), kind="bi")
    student = _perturbed(load_reranker(str(tiny_bert_dir), kind="bi"), tmp_path / "student")
    for w in (0.0, 0.3, 1.0):
        out = merge_models(str(tmp_path / "student"), str(tiny_bert_dir),
                           str(tmp_path / f"m{w}"), w, "bi")
        merged = load_reranker(out, kind="bi")
        sd, s_sd, b_sd = merged.state_dict(), student.state_dict(), base.state_dict()
        for k, v in sd.items():
            torch.testing.assert_close(v, s_sd[k] + w * (b_sd[k] - s_sd[k]), rtol=1e-5,
                                       atol=1e-6)
        ends = {0.0: student, 1.0: base}
        if w in ends:
            np.testing.assert_allclose(merged.score(QUERY, DOCS), ends[w].score(QUERY, DOCS),
                                       rtol=1e-5, atol=1e-6)
    mid = load_reranker(str(tmp_path / "m0.3"), kind="bi").score(QUERY, DOCS)
    assert not np.allclose(mid, base.score(QUERY, DOCS), atol=1e-4)
    assert "0.7 x" in (tmp_path / "m0.3" / "README.md").read_text()


def test_cross_encoder_merges_with_the_seeded_head_the_run_started_from(tiny_bert_dir, tmp_path):
    """A cross-encoder trained from a bare encoder started from a new head drawn after
    ``torch.manual_seed(seed)``; at w = 1 the merge must score as that starting model, which
    only the same seed reproduces."""
    torch.manual_seed(7)
    start = load_reranker(str(tiny_bert_dir), kind="cross")
    _perturbed(load_reranker(str(tiny_bert_dir), kind="cross"), tmp_path / "student")
    out = merge_models(str(tmp_path / "student"), str(tiny_bert_dir), str(tmp_path / "m"), 1.0,
                       "cross", seed=7)
    merged = load_reranker(out, kind="cross")
    np.testing.assert_allclose(merged.score(QUERY, DOCS), start.score(QUERY, DOCS), rtol=1e-5,
                               atol=1e-6)
    other = merge_models(str(tmp_path / "student"), str(tiny_bert_dir), str(tmp_path / "o"), 1.0,
                         "cross", seed=8)
    assert not np.allclose(load_reranker(other, kind="cross").score(QUERY, DOCS),
                           start.score(QUERY, DOCS), atol=1e-4)


def test_cli_reads_the_run_config_beside_the_model(tiny_bert_dir, tmp_path, capsys):
    from raglign.cli import main

    run = tmp_path / "run"
    _perturbed(load_reranker(str(tiny_bert_dir), kind="bi"), run / "model")
    (run / "train_config.yaml").write_text(yaml.safe_dump(
        {"model": str(tiny_bert_dir), "kind": "bi", "seed": 42}))
    assert main(["models", "merge", str(run / "model"), str(tmp_path / "m"),
                 "--base-weight", "1"]) == 0
    assert f"1 x {tiny_bert_dir}" in capsys.readouterr().out
    np.testing.assert_allclose(
        load_reranker(str(tmp_path / "m"), kind="bi").score(QUERY, DOCS),
        load_reranker(str(tiny_bert_dir), kind="bi").score(QUERY, DOCS), rtol=1e-5, atol=1e-6)
    (run / "train_config.yaml").unlink()
    assert main(["models", "merge", str(run / "model"), str(tmp_path / "n"),
                 "--base-weight", "0.5"]) != 0
    assert "name the starting model with --base" in capsys.readouterr().err
