"""GPU kernel benchmarks (issue 6), with ``triton.testing.do_bench``. Needs a CUDA device; on a
machine without one it says so and exits (``--dry-run``: the same calls at tiny shapes in Triton's
interpreter on CPU, nothing written). Writes ``benchmarks/results/kernels-<device>-<date>.json``.

1. Paged decode attention as a fraction of the measured HBM copy bandwidth (goal >= 70 %):
   bf16, Llama-3.1-8B attention shape (32 query heads, 8 kv heads, head dim 128), 64 sequences
   of 4096 tokens, block size 16, random block tables.
2. Shared-prefix attention vs per-request paged decode attention: prefix 2048, suffix 128,
   16 requests per prefix, 8 prefixes (goal >= 5x; FlashInfer reports up to 31x for cascade).
3. The fused MoE kernel at Mixtral's and Qwen3-30B-A3B's expert shapes (bench_moe_kernel.py).
``--shared-prefix-only``: 1 and 2 alone (``kernels-shared-prefix-<device>-<date>.json``), the
figures issue 6 still owes. The sweeps' kernels are compiled first by worker processes side by
side (benchmarks/precompile.py), each figure printed and saved as it is measured.
Timed as called (``do_bench``: the host's launch work included where it exceeds the device's)
and, for the attention kernels, as device time (``do_bench_cudagraph``: replayed from a CUDA graph).
Each also swept over its launch options and split length (decode: num_warps 2/4/8 x num_stages
2/3/4 x 16/32/64 blocks; shared prefix: shared_prefix_case.py's ``shared_sweep``, and its
``merge_sweep``: the merge's options on the best settings), sorted fastest first: one GPU call
says whether the defaults should change.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from datetime import date
from itertools import product
from pathlib import Path

import torch


def timed_once(function) -> float:
    """Milliseconds of one call: the dry run's stand-in for ``do_bench``."""
    started = time.perf_counter()
    function()
    return (time.perf_counter() - started) * 1e3


def graphed(function) -> float | None:
    """Milliseconds of device time, median: the calls replayed from a CUDA graph, so that the
    host's launch work (Python, Triton's launcher: tens of microseconds a kernel) drops out;
    None where the call cannot be captured."""
    from triton.testing import do_bench_cudagraph

    try:
        return do_bench_cudagraph(function, return_mode="median")
    except Exception as error:  # said, not fatal: the plain timing stands
        print(f"CUDA graph timing failed: {str(error)[:200]}")
        return None


def copy_bandwidth(device: str, do_bench, elements: int = 1 << 30) -> float:
    """Bytes/s of a device-to-device copy of 2 GiB (read + write counted)."""
    source = torch.empty(elements, dtype=torch.float16, device=device)
    target = torch.empty_like(source)
    milliseconds = do_bench(lambda: target.copy_(source))
    return 2 * source.numel() * source.element_size() / (milliseconds / 1e3)


def main(argv: list[str]) -> int:
    # --dry-run: every call of the benchmark at tiny shapes on the CPU, in Triton's interpreter
    # (set TRITON_INTERPRET=1), nothing written: catches a broken benchmark before GPU time
    dry = "--dry-run" in argv
    # --shared-prefix-only: the copy bandwidth, paged decode and the shared-prefix figures and
    # sweeps alone (what issue 6 still owes), into kernels-shared-prefix-<device>-<date>.json
    only = "--shared-prefix-only" in argv
    if not dry and not torch.cuda.is_available():
        print("bench_kernels: no CUDA device here; the GPU figures need a machine with one")
        return 0
    import triton
    from triton.testing import do_bench

    bench = timed_once if dry else do_bench  # a dry run: one call is enough to exercise the code
    device_ms = timed_once if dry else graphed

    from kernels.paged_decode import paged_decode_attention

    device, dtype = ("cpu", torch.float32) if dry else ("cuda", torch.bfloat16)
    heads, kv_heads, head_dim, block_size = (4, 2, 16, 16) if dry else (32, 8, 128, 16)
    results = {"device": "dry run" if dry else torch.cuda.get_device_name(), "torch": torch.__version__,
               "triton": triton.__version__, "python": platform.python_version(), "date": date.today().isoformat()}
    copy_bw = copy_bandwidth(device, bench, 1 << 12 if dry else 1 << 30)
    results["hbm_copy_bandwidth_gb_s"] = copy_bw / 1e9
    out = Path(__file__).resolve().parent / "results"
    name = f"{'shared-prefix-' if only else ''}{results['device'].replace(' ', '-')}-{results['date']}"
    path = out / f"kernels-{name}.json"

    def save(headline: str) -> None:
        """Prints a figure as soon as it is measured and keeps everything so far (a GPU stage's
        time may end before the sweeps do)."""
        print(headline, flush=True)
        if not dry:
            out.mkdir(exist_ok=True)
            path.write_text(json.dumps(results, indent=2))

    save(f"device-to-device copy: {copy_bw / 1e9:.0f} GB/s (read + write)")

    seqs, context = (2, 64) if dry else (64, 4096)
    blocks_per_seq = context // block_size
    num_blocks = seqs * blocks_per_seq
    key = torch.randn((num_blocks, block_size, kv_heads, head_dim), device=device, dtype=dtype)
    value = torch.randn_like(key)
    tables = torch.randperm(num_blocks, device=device).view(seqs, blocks_per_seq).to(torch.int32)
    contexts = torch.full((seqs,), context, dtype=torch.int32, device=device)
    query = torch.randn((seqs, heads, head_dim), device=device, dtype=dtype)
    # the largest context is known on the host, as in the engine (reading it costs a device sync)
    decode_ms = bench(lambda: paged_decode_attention(query, key, value, tables, contexts, head_dim ** -0.5,
                                                        max_context=context))
    kv_bytes = 2 * seqs * context * kv_heads * head_dim * key.element_size()  # keys and values
    results["paged_decode"] = {"seqs": seqs, "context": context, "ms": decode_ms,
                               "bandwidth_gb_s": kv_bytes / (decode_ms / 1e3) / 1e9,
                               "fraction_of_copy_bandwidth": kv_bytes / (decode_ms / 1e3) / copy_bw}
    results["paged_decode"]["device_ms"] = device_ms(
        lambda: paged_decode_attention(query, key, value, tables, contexts, head_dim ** -0.5, max_context=context))
    save(f"paged decode ({seqs} x {context} tokens): {decode_ms:.3f} ms, "
         f"{results['paged_decode']['fraction_of_copy_bandwidth']:.1%} of the copy bandwidth; "
         f"device time (CUDA graph) {results['paged_decode']['device_ms']} ms")
    shared_prefix_results((bench, device_ms), device, dtype, dry, results, save,
                          (heads, kv_heads, head_dim, block_size))
    if only:
        print(json.dumps(results, indent=2) if dry else f"written: {path}")
        return 0
    # the launch options and split length the defaults above fix, swept (one GPU call finds the
    # best; a dry run tries two of each)
    sweep = []
    for warps, stages, split in product(*(((4,), (3,), (32,)) if dry else ((2, 4, 8), (2, 3, 4), (16, 32, 64)))):
        ms = bench(lambda: paged_decode_attention(query, key, value, tables, contexts, head_dim ** -0.5,
                                                  blocks_per_split=split, max_context=context,
                                                  num_warps=warps, num_stages=stages))
        sweep.append({"num_warps": warps, "num_stages": stages, "blocks_per_split": split, "ms": ms,
                      "fraction_of_copy_bandwidth": kv_bytes / (ms / 1e3) / copy_bw})
    results["paged_decode_sweep"] = sorted(sweep, key=lambda row: row["ms"])
    save(f"paged decode sweep: best {results['paged_decode_sweep'][0]}")
    # gpt-oss's sliding layers: the same decodes over a 128-token window (8 in a dry run), with
    # sinks; bandwidth over the blocks the window touches
    window = 8 if dry else 128
    sinks = torch.randn(heads, device=device, dtype=dtype)
    window_ms = bench(lambda: paged_decode_attention(query, key, value, tables, contexts, head_dim ** -0.5,
                                                        max_context=context, window=window, sinks=sinks))
    if dry:  # the windowed kernel must agree with its reference
        from kernels.paged_decode import paged_decode_reference
        torch.testing.assert_close(
            paged_decode_attention(query, key, value, tables, contexts, head_dim ** -0.5, window=window, sinks=sinks),
            paged_decode_reference(query, key, value, tables, contexts, head_dim ** -0.5, window, sinks),
            rtol=1e-4, atol=1e-5)
    window_bytes = kv_bytes * (-(-(window - 1) // block_size) + 1) * block_size / context  # its blocks' share
    results["paged_decode_window"] = {"seqs": seqs, "context": context, "window": window, "sinks": True,
                                      "ms": window_ms, "speedup_over_full_context": decode_ms / window_ms,
                                      "fraction_of_copy_bandwidth": window_bytes / (window_ms / 1e3) / copy_bw}

    save(f"windowed decode: {window_ms:.3f} ms")
    from bench_moe_kernel import moe_results  # the fused MoE kernel against the torch loop, roofline and vLLM
    results["fused_moe"] = moe_results(bench, device, dry, results["device"])
    save("fused MoE: done")
    results["delta_step"] = delta_step_results(bench, device, dry, copy_bw)
    save("DeltaNet step: done")
    results["gemma4_full_decode"] = gemma4_decode_results(bench, device, dry, copy_bw)
    if dry:
        print(json.dumps(results, indent=2))
        return 0
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    best_decode, best_shared = results["paged_decode_sweep"][0], results["shared_prefix_sweep"][0]
    print(f"paged decode: {results['paged_decode']['fraction_of_copy_bandwidth']:.1%} of the copy bandwidth with the "
          f"defaults, {best_decode['fraction_of_copy_bandwidth']:.1%} at best ({best_decode})")
    print(f"shared prefix: {results['shared_prefix']['speedup']:.2f}x over per-request attention with the defaults, "
          f"{best_shared['speedup']:.2f}x at best; device time (CUDA graphs): "
          f"{results['shared_prefix']['device_speedup']}x with the defaults, {best_shared['device_speedup']}x at best "
          f"({best_shared})")
    for row in results["fused_moe"]["rows"]:
        print(f"fused MoE {row['model']} batch {row['batch']}: {row['kernel_us']:.1f} us, torch loop "
              f"{row['torch_loop_us']:.1f} us, roofline {row['roofline_us']:.1f} us, vLLM on an H100 "
              f"{row['vllm_h100_published_us']} us")
    delta = results["delta_step"]
    print(f"DeltaNet decode step (batch {delta['batch']}, {delta['heads']} heads of {delta['key_dim']} x "
          f"{delta['value_dim']}): {delta['kernel_ms']:.3f} ms fused, {delta['torch_ms']:.3f} ms in torch "
          f"({delta['speedup']:.2f}x), {delta['fraction_of_copy_bandwidth']:.1%} of the copy bandwidth")
    gemma4 = results["gemma4_full_decode"]
    print(f"paged decode at Gemma 4 31B's full layers ({gemma4['heads']} heads, {gemma4['kv_heads']} kv heads of "
          f"{gemma4['head_dim']}): {gemma4['fraction_of_copy_bandwidth']:.1%} of the copy bandwidth with the defaults, "
          f"{gemma4['best']['fraction_of_copy_bandwidth']:.1%} at best ({gemma4['best']})")
    print(f"written: {path}")
    return 0


def shared_prefix_results(timers, device: str, dtype, dry: bool, results: dict, save, shape: tuple) -> None:
    """Shared-prefix attention against per-request paged decode attention (issue 6's second
    figure), timed as called (host launch work included) and as device time (``timers``: the
    two), then its launch options swept; into ``results``."""
    bench, device_ms = timers
    from kernels.shared_prefix import shared_prefix_layout
    from shared_prefix_case import (merge_sweep, merge_warmups, per_request_sweep, relative_error, shared_prefix_case,
                                    shared_sweep, sweep_calls)

    head_dim, block_size = shape[2:]
    case = shared_prefix_case(shape, dtype, device, dry)
    prefix, suffix, per_group, groups = case["prefix"], case["suffix"], case["per_group"], case["groups"]
    # the engine builds a step's group layout once on the host and reuses it in every layer;
    # timed apart (host work, once per step), the kernel with it
    started = time.perf_counter()
    layout = shared_prefix_layout(case["tables"].tolist(), case["contexts"].tolist(), case["group_list"], block_size,
                                  device)
    if not dry:
        torch.cuda.synchronize()
    layout_ms = (time.perf_counter() - started) * 1e3
    per_request, shared = sweep_calls(case, head_dim, layout)
    # the sweeps' kernels compiled side by side in worker processes first (Triton's on-disk cache
    # then serves the timings here): ptxas takes seconds a variant, the timing a fraction of one
    from precompile import precompile
    precompile([("per_request", {}), ("shared", {})] + [("shared", options) for options in shared_sweep(dry)]
               + [("per_request", options) for options in per_request_sweep(dry)]
               + [("shared", options) for options in merge_warmups(dry)], shape, dry)
    per_request_ms = bench(per_request)
    reference = per_request()  # each shared-prefix output is checked against it
    if dry:  # the shared-prefix kernel must agree with per-request attention
        for split, fused_merge in ((32, False), (1, False), (1, True)):
            torch.testing.assert_close(shared(prefix_blocks_per_split=split, fused_merge=fused_merge), reference,
                                       rtol=1e-4, atol=1e-5)
    shared_ms = bench(shared)
    per_request_device = device_ms(per_request)
    shared_device = device_ms(shared)
    device_speedup = per_request_device / shared_device if per_request_device and shared_device else None
    results["shared_prefix"] = {"prefix": prefix, "suffix": suffix, "requests_per_prefix": per_group,
                                "prefixes": groups, "per_request_ms": per_request_ms, "shared_ms": shared_ms,
                                "speedup": per_request_ms / shared_ms, "layout_per_step_ms": layout_ms,
                                "per_request_device_ms": per_request_device, "shared_device_ms": shared_device,
                                "device_speedup": device_speedup}
    save(f"shared prefix (prefix {prefix}, suffix {suffix}, {per_group} a prefix, {groups} prefixes): "
         f"{shared_ms:.3f} ms against {per_request_ms:.3f} ms per request, {per_request_ms / shared_ms:.2f}x; "
         f"device time {shared_device} ms against {per_request_device} ms, {device_speedup}x")
    sweep = []
    # each setting's output, after its timings, against the per-request kernel's: a fast setting
    # that computes something else (a race in the fused merge, say) is marked and never the best
    from best_shared_prefix import TOLERANCE  # the rule that picks the best takes the same bound

    ranked = lambda row: (row["relative_error"] > TOLERANCE, row["device_ms"] or row["ms"])  # noqa: E731

    def timed_sweep(settings: list[dict], label: str) -> None:
        for number, options in enumerate(settings, 1):
            try:
                ms = bench(lambda: shared(**options))
            except Exception as error:  # noqa: BLE001 - one setting that fails (resources, say) ends no sweep
                results.setdefault("shared_prefix_sweep_errors", []).append({**options, "error": str(error)[:300]})
                save(f"{label} {number}/{len(settings)}: failed, {str(error)[:120]}, {options}")
                continue
            graph_ms = device_ms(lambda: shared(**options))
            sweep.append({**options, "ms": ms, "speedup": per_request_ms / ms, "device_ms": graph_ms,
                          "device_speedup": per_request_device / graph_ms if per_request_device and graph_ms else None,
                          "relative_error": relative_error(shared(**options), reference)})
            results["shared_prefix_sweep"] = sorted(sweep, key=ranked)
            save(f"{label} {number}/{len(settings)}: device {graph_ms} ms, as called {ms:.4f} ms, "
                 f"error {sweep[-1]['relative_error']:.1e}, {options}")  # kept as it goes

    # the kernel sweep's likeliest 12 settings (2026-12-04's best region, each way of merging),
    # then the merge's options (partials' dtype, one trip or two, rows and warps a merge program)
    # on the best of those, then the rest of the kernel sweep: a stage cut short keeps the likeliest
    # rows of both; all rows join one sweep, so the best of all is picked
    settings = shared_sweep(dry)
    timed_sweep(settings[:12], "shared prefix sweep")
    timed_sweep(merge_sweep(results["shared_prefix_sweep"], dry), "shared prefix merge sweep")
    timed_sweep(settings[12:], "shared prefix sweep (the rest)")
    save(f"shared prefix sweep: best {results['shared_prefix_sweep'][0]}")
    # the per-request kernel at its own best for this shape too: the ratio against a tuned baseline
    baseline = []
    for options in per_request_sweep(dry):
        graph_ms = device_ms(lambda: per_request(**options))
        baseline.append({**options, "device_ms": graph_ms})
    best_baseline = min(baseline, key=lambda row: row["device_ms"] or float("inf"))
    best_shared = results["shared_prefix_sweep"][0]
    results["per_request_sweep"] = baseline
    results["shared_prefix"]["best_over_best_device_speedup"] = (
        best_baseline["device_ms"] / best_shared["device_ms"] if best_baseline["device_ms"] and best_shared["device_ms"]
        else None)
    save(f"shared prefix, each kernel at its best (device time): {best_shared['device_ms']} ms against per-request "
         f"{best_baseline['device_ms']} ms ({best_baseline}), {results['shared_prefix']['best_over_best_device_speedup']}x")
    results["shared_prefix_batch"] = batch_scaling(timers, shape, dtype, device, dry, best_shared, best_baseline)
    save(f"shared prefix at more prefixes (16 requests each; device time, each kernel at its best): "
         f"{results['shared_prefix_batch']}")
    for fused_merge, prefix_first in dict.fromkeys((row["fused_merge"], row["prefix_first"]) for row in settings):
        # the best of each way of merging
        best = next((row for row in results["shared_prefix_sweep"]
                     if (row["fused_merge"], row["prefix_first"]) == (fused_merge, prefix_first)), None)
        save(f"shared prefix sweep, merge {'fused' if fused_merge else 'launched'}"
             f"{'' if prefix_first else ', sequences first'}: best {best}")


def batch_scaling(timers, shape: tuple, dtype, device: str, dry: bool, best_shared: dict, best_baseline: dict) -> list:
    """The issue's shape at 8, 16 and 32 prefixes of 16 requests (128 to 512 decodes a step; 2 and
    4 in a dry run), each kernel at the sweep's best setting for 8: a launch's fixed costs (its
    ramp, its tail, the merge's launch) weigh less in a larger batch, so the figure at 8 prefixes
    alone understates an offline job's batches. Device time; rows with the speed-up."""
    from kernels.shared_prefix import OPTIONS, shared_prefix_layout
    from shared_prefix_case import relative_error, shared_prefix_case, sweep_calls

    _, device_ms = timers
    shared_options = {name: best_shared[name] for name in OPTIONS if name in best_shared}
    per_request_options = {name: value for name, value in best_baseline.items() if name != "device_ms"}
    rows = []
    for groups in (2, 4) if dry else (8, 16, 32):
        case = shared_prefix_case(shape, dtype, device, dry, groups)
        layout = shared_prefix_layout(case["tables"].tolist(), case["contexts"].tolist(), case["group_list"], shape[3],
                                      device)
        per_request, shared = sweep_calls(case, shape[2], layout)
        per_request_ms = device_ms(lambda: per_request(**per_request_options))
        shared_ms = device_ms(lambda: shared(**shared_options))
        rows.append({"prefixes": groups, "decodes": groups * case["per_group"], "per_request_device_ms": per_request_ms,
                     "shared_device_ms": shared_ms,
                     "device_speedup": per_request_ms / shared_ms if per_request_ms and shared_ms else None,
                     "relative_error": relative_error(shared(**shared_options), per_request(**per_request_options))})
        del case, layout
    return rows


def gemma4_decode_results(bench, device: str, dry: bool, copy_bw: float) -> dict:
    """Paged decode at Gemma 4 31B's full layers' shape (32 query heads, 4 kv heads of 512, softmax
    scale 1; vLLM runs it on its Triton backend, FlashAttention having no head size of 512): 64
    requests at context 4,096 in bf16, its KV read as a fraction of the copy bandwidth, with the
    defaults and the best of a few launch settings."""
    from kernels.paged_decode import paged_decode_attention, paged_decode_reference

    heads, kv_heads, head_dim, block_size = (4, 1, 32, 16) if dry else (32, 4, 512, 16)
    seqs, context = (2, 48) if dry else (64, 4096)
    dtype = torch.float32 if dry else torch.bfloat16
    blocks = seqs * context // block_size
    key = torch.randn((blocks, block_size, kv_heads, head_dim), device=device, dtype=dtype) / 8
    value = torch.randn_like(key)
    tables = torch.randperm(blocks, device=device).view(seqs, -1).to(torch.int32)
    contexts = torch.full((seqs,), context, dtype=torch.int32, device=device)
    query = torch.randn((seqs, heads, head_dim), device=device, dtype=dtype) / 8
    if dry:  # the kernel must agree with its reference at this head size
        torch.testing.assert_close(paged_decode_attention(query, key, value, tables, contexts, 1.0),
                                   paged_decode_reference(query, key, value, tables, contexts, 1.0), rtol=1e-4, atol=1e-5)
    kv_bytes = 2 * seqs * context * kv_heads * head_dim * key.element_size()
    rows = []
    for warps, stages in ((4, 3),) if dry else ((4, 3), (4, 2), (8, 2), (8, 3), (2, 2)):
        try:
            ms = bench(lambda: paged_decode_attention(query, key, value, tables, contexts, 1.0, max_context=context,
                                                      num_warps=warps, num_stages=stages))
        except Exception as error:  # a setting whose tiles do not fit: said, not fatal
            rows.append({"num_warps": warps, "num_stages": stages, "error": str(error)[:200]})
            continue
        rows.append({"num_warps": warps, "num_stages": stages, "ms": ms,
                     "fraction_of_copy_bandwidth": kv_bytes / (ms / 1e3) / copy_bw})
    default_ms = bench(lambda: paged_decode_attention(query, key, value, tables, contexts, 1.0, max_context=context))
    timed = sorted((row for row in rows if "ms" in row), key=lambda row: row["ms"])
    return {"heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "seqs": seqs, "context": context,
            "ms": default_ms, "fraction_of_copy_bandwidth": kv_bytes / (default_ms / 1e3) / copy_bw,
            "best": timed[0] if timed else None, "sweep": rows}


def delta_step_results(bench, device: str, dry: bool, copy_bw: float) -> dict:
    """The fused Gated DeltaNet decode step (kernels/delta_rule.py) against the engine's torch step,
    at a Qwen3.5-27B linear layer's shapes (48 value heads of 128 x 128 fp32 states) for 64
    decoding requests; its state read and written once, as a fraction of the copy bandwidth."""
    from engine.delta_net import delta_rule_step as reference
    from engine.delta_net import l2_normalise
    from kernels.delta_rule import delta_rule_step

    batch, heads, key_dim, value_dim = (2, 2, 16, 8) if dry else (64, 48, 128, 128)
    q = l2_normalise(torch.randn(batch, heads, key_dim, device=device)) * key_dim ** -0.5
    k = l2_normalise(torch.randn(batch, heads, key_dim, device=device))
    v = torch.randn(batch, heads, value_dim, device=device)
    g, beta = -torch.rand(batch, heads, device=device), torch.rand(batch, heads, device=device)
    state = torch.randn(batch, heads, key_dim, value_dim, device=device)
    if dry:  # the kernel must agree with the engine's step
        expected = reference(q, k, v, g, beta, state.clone())[0]
        torch.testing.assert_close(delta_rule_step(q, k, v, g, beta, state.clone())[0], expected, rtol=1e-5, atol=1e-5)
    kernel_ms = bench(lambda: delta_rule_step(q, k, v, g, beta, state))
    torch_ms = bench(lambda: reference(q, k, v, g, beta, state))
    moved = 2 * state.numel() * 4  # read once, written once
    return {"batch": batch, "heads": heads, "key_dim": key_dim, "value_dim": value_dim, "kernel_ms": kernel_ms,
            "torch_ms": torch_ms, "speedup": torch_ms / kernel_ms,
            "fraction_of_copy_bandwidth": moved / (kernel_ms / 1e3) / copy_bw}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
