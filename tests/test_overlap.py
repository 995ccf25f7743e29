"""hardware.overrides.step_overlap: steps whose compute- and memory-bound kernels overlap
(NanoFlow; BlendServe's "practical optimum"), sim/overlap.py."""
import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scheduler import Request, schedule_config
from scheduler.errors import ConfigError
from scheduler.model_spec import model_spec
from sim.cost_model import CostModel
from sim.hardware import hardware_spec, kv_capacity_blocks
from sim.overlap import OverlapCostModel
from sim.roofline import build_roofline_profile
from sim.simulator import simulate
from traces.synthetic import mixed_batch
from traces.workload import Workload

ROOT = Path(__file__).resolve().parents[1]
MODEL = model_spec("llama-3.1-8b")
HARDWARE = hardware_spec("h100-sxm")
PLAIN = CostModel(build_roofline_profile(MODEL, HARDWARE), MODEL)
OVERLAP = OverlapCostModel(MODEL, HARDWARE)
BLOCKS = kv_capacity_blocks(MODEL, HARDWARE, 16)


def _plans(workload, config):
    plans = []
    simulate(workload, config, PLAIN, BLOCKS, 16, fast_forward=False,
             on_plan=lambda plan: plans.append((plan, PLAIN.step(plan)[0], OVERLAP.step(plan)[0])))
    return plans


def test_memory_bound_steps_cost_the_same_and_mixed_ones_less():
    """A step whose every kernel is memory-bound (a few decodes) has nothing to hide: overlapped it
    costs exactly what the summed roofline charges. A step that computes a 2,048-token chunk
    beside 64 long decodes hides the decodes' attention under the GEMMs."""
    few = Workload("few", tuple(Request(i, 0.0, ((i, 1000),), 40) for i in range(4)))
    decode_only = [(p, plain, over) for p, plain, over in _plans(few, schedule_config("fcfs"))
                   if not p.listed or all(c.num_tokens == 1 for c in p.listed)]
    assert decode_only and all(over == plain for _, plain, over in decode_only)
    busy = Workload("busy", tuple(Request(i, 0.0, ((i, 4000 if i < 64 else 4096),), 400 if i < 64 else 2)
                                  for i in range(72)))
    mixed = [(plain, over) for p, plain, over in _plans(busy, schedule_config("fcfs", max_num_batched_tokens=2048))
             if p.decodes.req_ids and sum(c.num_tokens for c in p.listed) >= 1024]
    assert mixed and all(over < 0.93 * plain for plain, over in mixed)
    # never dearer than summed kernels, never below half of them
    everything = _plans(busy, schedule_config("fcfs"))
    assert all(0.5 * plain <= over <= plain for _, plain, over in everything)


def test_fast_forward_is_identical_with_overlap():
    workload = mixed_batch(counts=(60, 60), shared=0.3)
    config = schedule_config("blend", max_num_batched_tokens=512)
    slow = simulate(workload, config, OVERLAP, 220, 16, fast_forward=False)
    fast = simulate(workload, config, OVERLAP, 220, 16, fast_forward=True)
    assert fast.num_events < slow.num_events
    a, b = slow.steps.columns(), fast.steps.columns()
    for name in a:
        assert np.array_equal(np.asarray(a[name]), np.asarray(b[name])), name
    assert slow.makespan_s == fast.makespan_s


def test_an_offline_batch_overlapped_is_the_benchmarks_bound():
    """benchmarks/blendserve_mix.py --overlap costs the plans of a summed-kernel run as overlapped
    steps (an offline batch's plans do not depend on step times); simulating with step_overlap
    gives the same makespans to the last bit."""
    spec = importlib.util.spec_from_file_location("blendserve_mix", ROOT / "benchmarks" / "blendserve_mix.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (row,) = bench.overlapped("h100-sxm", "llama-3.1-8b", shared_values=(0.35,), counts=(300, 300))
    workload = mixed_batch(shared=0.35, counts=(300, 300))
    for name in ("fcfs", "sorted", "blend"):
        assert simulate(workload, schedule_config(name), OVERLAP, BLOCKS, 16).makespan_s == row[name][1], name


def test_overlap_is_a_roofline_option():
    with pytest.raises(ConfigError, match="step_overlap is 'yes'; expected true or false"):
        dataclasses.replace(HARDWARE, step_overlap="yes")
    assert "steps overlapped" in OVERLAP.profile.label
    from sim.overlap import roofline_cost_model
    assert isinstance(roofline_cost_model(MODEL, dataclasses.replace(HARDWARE, step_overlap=True)), OverlapCostModel)
    assert type(roofline_cost_model(MODEL, HARDWARE)) is CostModel
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "batchlab.cli", "simulate", "model=tiny",
                             "profile=profiles/tiny-cpu-float32-torch", "hardware.overrides.step_overlap=true",
                             "workload.params.num_requests=32", "report=false"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "only the roofline profile has (profile=null)" in result.stderr
