"""fp32 vs bf16 on this CPU: matmul GFLOP/s at SmolLM2's shapes and the real model's prefill
tokens/s, in one run, with the CPU's native-bf16 flags that ``dtype: auto`` reads; and fp32
matmul throughput of one 2-thread process vs two 1-thread processes.

    python benchmarks/bench_cpu_dtype.py [--threads 1] [--tokens 200]

Why it exists: ``dtype: auto`` used to mean bf16 on every CPU, measured 1.7x faster than fp32 on
an AVX-512-BF16 EPYC; on an AVX2-only EPYC bf16 is emulated and several times *slower*.
``raglign.models.generator.cpu_has_fast_bf16`` now decides, and this script shows why.
"""

from __future__ import annotations

import argparse
import json
import platform
import time


def gflops(fn, flops: float, repeat: int) -> float:
    for _ in range(2):
        fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return flops * repeat / (time.perf_counter() - t) / 1e9


def matmul_rate(rows: int, dtype=None, threads: int | None = None, queue=None) -> float:
    """GFLOP/s of a ``rows x 576 x 1536`` matmul (SmolLM2's MLP input projection), fp32 unless
    ``dtype``; ``threads`` sets torch's thread count first; ``queue`` receives the rate (for a
    child process)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    dtype = dtype or torch.float32
    x, w = torch.randn(rows, 576, dtype=dtype), torch.randn(1536, 576, dtype=dtype)
    rate = gflops(lambda: torch.nn.functional.linear(x, w), 2 * rows * 576 * 1536,
                  max(5, 2000 // rows))
    if queue is not None:
        queue.put(rate)
    return rate


def process_layouts() -> dict[str, float]:
    """One process with 2 threads vs 2 concurrent single-threaded processes (the layout of 2
    label actors or 2 DDP workers), fp32 GFLOP/s summed over processes."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=matmul_rate, args=(1600, None, 1, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    rates = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return {"1 process x 1 thread": round(matmul_rate(1600, threads=1), 1),
            "1 process x 2 threads": round(matmul_rate(1600, threads=2), 1),
            "2 processes x 1 thread (sum)": round(sum(rates), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=200, help="prefill length for the model")
    ap.add_argument("--generator", default="smollm2-135m")
    args = ap.parse_args()

    import torch

    from raglign.models.generator import TransformersGenerator, cpu_has_fast_bf16

    torch.set_num_threads(args.threads)
    result = {"cpu": platform.processor() or platform.machine(),
              "capability": torch.backends.cpu.get_cpu_capability(),
              "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
              "amx": torch.cpu._is_amx_tile_supported(), "fast_bf16": cpu_has_fast_bf16(),
              "threads": args.threads, "matmul_gflops": {}, "prefill_tokens_per_s": {}}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        # a decode step, a small batch, one prompt, a question's documents
        for rows in (1, 8, 200, 1600):
            result["matmul_gflops"][f"{name} {rows}x576x1536"] = round(matmul_rate(rows, dtype), 1)
        gen = TransformersGenerator.from_name(args.generator, dtype=dtype, device="cpu")
        ids = torch.randint(100, 1000, (1, args.tokens))
        with torch.inference_mode():
            gen.model(input_ids=ids, logits_to_keep=1)
            t = time.perf_counter()
            for _ in range(3):
                gen.model(input_ids=ids, logits_to_keep=1)
        result["prefill_tokens_per_s"][name] = round(3 * args.tokens / (time.perf_counter() - t), 1)
        del gen
    fp32, bf16 = (result["prefill_tokens_per_s"][k] for k in ("float32", "bfloat16"))
    result["bf16_over_fp32_prefill"] = round(bf16 / fp32, 3)
    result["fp32_matmul_gflops_by_layout"] = process_layouts()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
