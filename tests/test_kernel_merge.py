"""The log-sum-exp merge of partial attentions (kernels/common.py), one row a program and several,
against a torch reference in float64; slots of weight 0 hold NaN, which must never be read."""
import pytest
import torch

pytest.importorskip("triton")

from kernels.common import merge_partials  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(parts, lse, sinks, heads):
    lse = lse.double() * torch.log(torch.tensor(2.0, dtype=torch.float64))  # base 2 -> natural
    if sinks is not None:
        sink = sinks.double()[torch.arange(lse.shape[0]) % heads].to(lse.device)[:, None]
        lse = torch.cat([lse, sink], 1)
        parts = torch.cat([parts, torch.zeros_like(parts[:, :1])], 1)
    weight = torch.softmax(lse, 1).nan_to_num(0.0)
    return (torch.where(weight[:, :, None] > 0, parts.double(), 0.0) * weight[:, :, None]).sum(1)


@pytest.mark.parametrize("rows_per_program, num_parts, head_dim", [(1, 5, 16), (4, 5, 16), (8, 5, 16), (8, 9, 128)])
@pytest.mark.parametrize("dtype, sinks", [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)])
@pytest.mark.parametrize("eager", [False, True])
def test_merge_matches_the_reference_however_many_rows_a_program(rows_per_program, num_parts, head_dim, dtype, sinks,
                                                                 eager):
    # 8 rows of 128 load 2 slots at a time: 9 slots in five loads, the last half empty (eager:
    # five steps of the running maximum, NaN read from the empty slots and dropped)
    generator = torch.Generator().manual_seed(rows_per_program)
    rows, heads = 12, 4  # 12 rows: 8 a program leaves a last one half empty
    parts = torch.randn((rows, num_parts, head_dim), generator=generator)
    lse = 3 * torch.randn((rows, num_parts), generator=generator)
    empty = torch.rand((rows, num_parts), generator=generator) < 0.3  # slots no program wrote
    empty[0] = True  # a row with no partial at all: zeros (or the sink alone)
    lse[empty] = float("-inf")
    parts[empty] = float("nan")
    sink = torch.randn(heads, generator=generator) if sinks else None
    out = torch.full((rows, head_dim), float("nan"), dtype=dtype, device=DEVICE)
    merge_partials(parts.to(DEVICE), lse.to(DEVICE), out, None if sink is None else sink.to(DEVICE),
                   rows_per_program=rows_per_program, eager=eager)
    assert not torch.isnan(out).any()
    expected = reference(parts, lse, sink, heads)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    assert (out.double().cpu() - expected).abs().max() <= tolerance * expected.abs().max()
    assert out[0].abs().max() == 0.0


@pytest.mark.parametrize("eager", [False, True])
def test_merge_of_bf16_partials_is_within_bf16_of_the_fp32_merge(eager):
    # partial outputs kept in bf16 (FlashInfer's merge_state takes them so; the log-sum-exps stay
    # fp32): the merge still computes in fp32, and differs from the fp32 partials' merge by the
    # partials' rounding alone
    generator = torch.Generator().manual_seed(7)
    rows, num_parts, head_dim = 12, 9, 128
    parts = torch.randn((rows, num_parts, head_dim), generator=generator)
    lse = 3 * torch.randn((rows, num_parts), generator=generator)
    empty = torch.rand((rows, num_parts), generator=generator) < 0.3
    lse[empty], parts[empty] = float("-inf"), float("nan")
    out = torch.full((rows, head_dim), float("nan"), device=DEVICE)
    merge_partials(parts.to(torch.bfloat16).to(DEVICE), lse.to(DEVICE), out, rows_per_program=4, eager=eager)
    expected = reference(parts, lse, None, 1)
    error = ((out.double().cpu() - expected).abs().max() / expected.abs().max()).item()
    assert error <= 1e-2, error
    assert error > 1e-6, error  # the partials were rounded to bf16, so the output must show it


def test_rows_per_program_must_be_a_power_of_two():
    parts, lse = torch.zeros((2, 2, 16)), torch.zeros((2, 2))
    with pytest.raises(ValueError, match="rows_per_program is 3; expected a power of two"):
        merge_partials(parts.to(DEVICE), lse.to(DEVICE), torch.empty((2, 16), device=DEVICE), rows_per_program=3)


def test_shared_prefix_parts_benchmark_dry_run():
    # benchmarks/shared_prefix_parts.py, which a GPU session runs, at tiny shapes in the
    # interpreter: each part's launch, the merge sweep, each result checked against per-request
    # attention (a broken launch shows here, not in scarce GPU time)
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "benchmarks/shared_prefix_parts.py", "--dry-run"],
                            cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    errors = [float(e) for e in re.findall(r"error ([-+.e0-9]+)", result.stdout)]
    # two kernel options, the first's merge fused (prefixes' programs first, then last), and 8
    # merges (2 launches x two trips or one x partials in fp32 or the query's dtype, fp32 here)
    assert len(errors) == 12 and max(errors) < 1e-5, result.stdout
