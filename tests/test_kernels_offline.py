"""Guards for machines without a GPU (a GPU session leaves them out): every kernel compiled for
sm_90 without running it, the variants the GPU's shared-prefix sweeps would launch compiled, and
the GPU kernel benchmark run at tiny shapes in the interpreter."""
import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from test_kernels import ROOT  # noqa: E402


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "kernels.compile_check", "90"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    # (10 kernels + 5 gpt-oss variants + Gemma's norm + shared prefix four and two blocks a step,
    # 4 members a program, and its merge fused at Llama's and gpt-oss's shapes) x (bf16, fp32), the
    # fp32 DeltaNet step, Gemma 4's 8 in bf16 (the attention kernels and merges at its full
    # layers' head size of 512, its norm, its GeGLU experts), and the merge's one-trip (eager)
    # form over partials in the model's dtype, launched and fused (x 2 dtypes)
    assert result.stdout.count("ok ") == 55
    # programs a multiprocessor (registers and shared memory, read from the cubins): 4 members a
    # prefix program hold fewer registers than 16 at two blocks a step, and merging in the
    # launch (4 slots a load) costs the kernel no program a multiprocessor
    resident = {name: (int(registers), int(programs)) for name, registers, programs in re.findall(
        r"ok _shared_prefix_kernel(\S*) +bf16 .* (\d+) registers, (\d+) programs a multiprocessor", result.stdout)}
    assert resident["+members4"][1] > resident["+pages2"][1], resident
    assert resident["+fused-merge"][1] >= resident["+pages2"][1], resident
    # no bf16 kernel, as launched for a real model, spills registers to local memory
    assert not [line for line in result.stdout.splitlines() if " bf16 " in line and "stack frame" in line]
    # the fused merge: each side's arrival an acquire-release atomic at GPU scope, after a barrier
    fused = re.findall(r"ok _shared_prefix_kernel\+fused-merge\S* +(\w+) .*acq_rel atomics (\d+), barriers (\d+)",
                       result.stdout)
    assert len(fused) == 6 and all(int(atomics) == 2 and int(barriers) > 0 for _, atomics, barriers in fused), fused
    assert re.search(r"ok _shared_prefix_kernel\+fused-merge +bf16 .*16-byte loads [1-9]\d*, 2-byte loads 0,",
                     result.stdout)
    # bf16 partials (written by the kernel, read by either merge) move 16 bytes a thread too
    eager = re.findall(r"ok (\w+)\S*\+eager +bf16 .*16-byte loads (\d+), 2-byte loads (\d+)", result.stdout)
    assert len(eager) == 2 and all(int(wide) > 0 and int(narrow) == 0 for _, wide, narrow in eager), eager
    # the shared-prefix kernel reading four blocks a step, in both dtypes, 16 bytes a thread in bf16
    assert re.search(r"ok _shared_prefix_kernel\+pages4 +bf16 .*16-byte loads [1-9]\d*, 2-byte loads 0,", result.stdout)
    assert re.search(r"ok _shared_prefix_kernel\+pages4 +fp32 ", result.stdout)
    # compiled as the launcher specialises them for a real model, bf16 kernels read device memory
    # 16 bytes a thread (vector loads or pipelined async copies), never element by element; the
    # gpt-oss variants read one 2-byte sink a program besides
    bf16 = re.findall(r"ok (\w+) +bf16 .*16-byte loads (\d+), 2-byte loads (\d+)", result.stdout)
    assert len(bf16) == 10 and all(int(wide) > 0 and int(narrow) == 0 for _, wide, narrow in bf16), bf16
    oss = re.findall(r"ok (\w+)\+gpt-oss +bf16 .*16-byte loads (\d+), 2-byte loads (\d+)", result.stdout)
    assert len(oss) == 5 and all(int(narrow) <= 1 for _, _, narrow in oss), oss
    assert re.search(r"ok _rmsnorm_kernel\+gemma +bf16 .*16-byte loads [1-9]\d*, 2-byte loads 0,", result.stdout)
    assert re.search(r"ok _delta_step_kernel +fp32 .*16-byte loads [1-9]\d*,", result.stdout)  # the state tile
    # Gemma 4's head size of 512: 16-byte loads, and each program's shared memory within what a
    # Hopper block may take (227 KB), so that the kernels launch on an H100 or H200
    gemma4 = re.findall(r"ok (\w+)\+gemma4 +bf16 .*16-byte loads (\d+), 2-byte loads (\d+), shared memory ([\d,]+) B",
                        result.stdout)
    assert len(gemma4) == 8 and all(int(wide) > 0 and int(narrow) == 0 and int(shared.replace(",", "")) <= 227 * 1024
                                    for _, wide, narrow, shared in gemma4), gemma4
    assert all(int(wide) > 0 for name, wide, _ in oss if name != "_merge_rows_kernel"), oss


def test_the_shared_prefix_sweeps_variants_compile_for_sm90():
    # benchmarks/compile_sweep.py compiles what the GPU's sweep would launch, with the constants
    # the wrapper derives (launch_constants); here its first two settings: the kernel at 16 and 8
    # members a program, and the launched merge they share (compiled once)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "benchmarks/compile_sweep.py", "--first", "2"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compile_sweep: 3 variants compiled for sm_90" in result.stdout and ", 0 failed" in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("ok ")]
    assert [line.split()[1] for line in lines] == ["_shared_prefix_kernel", "_merge_rows_kernel", "_shared_prefix_kernel"]
    assert "'MEMBERS': 16" in lines[0] and "'MEMBERS': 8" in lines[2]
    wrong = subprocess.run([sys.executable, "benchmarks/compile_sweep.py", "--first", "two"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "usage: python benchmarks/compile_sweep.py" in wrong.stderr
    assert "got '--first two'" in wrong.stderr


def test_gpu_kernel_benchmark_dry_run():
    # the benchmark a GPU session runs (benchmarks/bench_kernels.py), every call at tiny shapes
    # in the interpreter, its shared-prefix result checked against per-request attention: a
    # signature change breaks it here, not in scarce GPU time
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "benchmarks/bench_kernels.py", "--dry-run"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"speedup"' in result.stdout and '"fraction_of_copy_bandwidth"' in result.stdout
    assert '"kernel_over_roofline"' in result.stdout  # the fused MoE rows (benchmarks/bench_moe_kernel.py)
    assert '"speedup_over_full_context"' in result.stdout  # gpt-oss's windowed decode
    assert '"delta_step"' in result.stdout  # the fused DeltaNet decode step against the torch step
    assert '"gemma4_full_decode"' in result.stdout  # paged decode at Gemma 4's head size of 512 (32 here)
    assert "precompile: 2 of 2 kernel calls compiled by 2 processes" in result.stdout  # spawned workers
    lines = result.stdout.splitlines()
    results = json.loads("\n".join(lines[len(lines) - 1 - lines[::-1].index("{"):]))  # the JSON printed last
    errors = [row["relative_error"] for row in results["shared_prefix_sweep"]]  # each setting against per-request
    # the kernel sweep's 24, then the merge's options on its best launched and fused settings:
    # 7 (partials x eager x 2 launches, less the defaults) and 3 (partials x eager, less the defaults)
    assert len(errors) == 34 and max(errors) < 1e-4
    merges = [row for row in results["shared_prefix_sweep"] if "merge_eager" in row]
    assert sorted(row["fused_merge"] for row in merges) == [False] * 7 + [True] * 3
    # the best setting at more prefixes of the same shape (here 2 and 4), each against per-request
    batch = results["shared_prefix_batch"]
    assert [(row["prefixes"], row["decodes"]) for row in batch] == [(2, 4), (4, 8)]
    assert max(row["relative_error"] for row in batch) < 1e-4
