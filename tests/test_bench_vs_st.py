"""The comparison with sentence-transformers (benchmarks/bench_vs_sentence_transformers.py)
compares like with like: ST's ``ListNetLoss`` on ``log(one-hot)`` labels is raglign's InfoNCE
on the same weights and batch, and the two trainers, given the same groups, order and schedule,
produce the same loss at every step."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import torch

def test_listnet_on_log_onehot_labels_is_raglign_infonce(tmp_path, minilm_tokenizer,
                                                         bench_module):
    from sentence_transformers.cross_encoder import CrossEncoder

    from raglign.training.tables import load_train_table

    bench = bench_module("bench_vs_sentence_transformers")
    model_dir = bench.tiny_cross_encoder(tmp_path / "model", minilm_tokenizer, 64, seed=0)
    texts = ["Paris is the capital of France.", "The Seine flows through Paris.",
             "Bears eat honey.", "A bicycle has two wheels.", "Mount Everest is in Nepal."]
    groups = [{"id": f"q{i}", "question": q,
               "docs": [{"doc_id": f"d{j}", "title": "", "text": texts[(i + j) % 5]}
                        for j in range(4)],
               "labels": [1.0 if j == pos else 0.0 for j in range(4)]}
              for i, (q, pos) in enumerate([("What is the capital of France?", 0),
                                            ("What do bears eat?", 2),
                                            ("Where is Everest?", 3)])]
    (tmp_path / "groups").mkdir()
    pq.write_table(pa.Table.from_pylist(groups), tmp_path / "groups" / "part-00000.parquet")
    table, _ = load_train_table(str(tmp_path / "groups"), "infonce")
    args = SimpleNamespace(max_length=64, batch_size=3, lr=1e-4, seed=0, threads=1)
    cfg = bench.train_config(str(tmp_path / "groups"), str(tmp_path / "out"), str(model_dir),
                             args, workers=0)
    ours, theirs = bench.same_batch_losses(cfg, table, [2, 0, 1])
    # The reference: InfoNCE computed by hand from ST's own scores of the pairs.
    model = CrossEncoder(str(model_dir), max_length=64, device="cpu")
    with torch.no_grad():
        by_hand = []
        for g in groups:
            pairs = [(g["question"], d["text"]) for d in g["docs"]]
            scores = torch.as_tensor(model.predict(pairs, activation_fn=torch.nn.Identity()))
            by_hand.append(-torch.log_softmax(scores, 0)[g["labels"].index(1.0)].item())
    assert abs(ours - theirs) < 1e-5
    assert abs(ours - sum(by_hand) / 3) < 1e-5
    assert max(by_hand) - min(by_hand) > 0.1  # groups differ: a mix-up would show
    # ListNet's usual binary labels are another loss: the soft target softmax([1, 0, 0, 0]).
    binary = bench.st_loss(model)([[g["question"] for g in groups],
                                   [[d["text"] for d in g["docs"]] for g in groups]],
                                  [torch.tensor(g["labels"]) for g in groups]).item()
    assert abs(binary - ours) > 0.05
    assert bench.st_labels([0.0, 1.0, 0.0]) == [-math.inf, 0.0, -math.inf]


def test_tiny_benchmark_trains_both_to_the_same_losses(tmp_path, shared_data, bench_module):
    bench = bench_module("bench_vs_sentence_transformers")
    report = bench.main(["--tiny", "--out", str(tmp_path),
                         "--data", str(shared_data / "hotpotqa" / "hotpotqa_train.json")])
    st, local = report["runs"]
    assert (st["layout"], local["layout"]) == ("st", "local")
    assert report["first_batch"]["diff"] < 1e-5
    assert len(st["losses"]) == len(local["losses"]) == 4
    # Step k's loss is that of step k's groups under the weights of k - 1 updates: equal per step
    # only if both saw the same groups in the same order and took the same updates.
    for a, b in zip(st["losses"], local["losses"]):
        assert abs(a - b) < 1e-4, (st["losses"], local["losses"])
    assert max(st["losses"]) - min(st["losses"]) > 0.05  # distinct steps, not a flat line
    assert st["pairs_per_s"] > 0 and local["pairs_per_s"] > 0
    table = [line for line in (tmp_path / "results.md").read_text().splitlines()
             if line.startswith("| 1 | ")]
    assert [line.split(" | ")[1] for line in table] == [bench.LAYOUTS["st"], bench.LAYOUTS["local"]]
