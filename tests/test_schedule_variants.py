"""Schedules with their own fields after a colon (``"sglang:max_num_seqs=256"``), side by side."""
import json

import pytest

from scheduler import schedule_config
from scheduler.errors import ConfigError


def test_a_variant_is_its_preset_with_its_fields_over_the_common_overrides():
    config = schedule_config("sglang:max_num_seqs=256,order=lpm, mixed_batches=true", max_num_seqs=100, caching="off")
    assert config.name == "sglang:max_num_seqs=256,order=lpm, mixed_batches=true"
    assert (config.max_num_seqs, config.order, config.mixed_batches) == (256, "lpm", True)  # its own win
    assert config.caching == "off"  # the common override where it says nothing
    assert config.new_token_ratio == 0.7 and config.max_num_batched_tokens == 8192  # the preset's
    assert schedule_config("batchllm:kv_threshold=0.95").kv_threshold == 0.95
    assert schedule_config("fcfs:max_num_seqs=null").max_num_seqs is None
    assert schedule_config("fcfs", max_num_seqs=None).max_num_seqs is None  # None sets, as before
    assert schedule_config("fcfs:new_token_ratio=1").new_token_ratio == 1


@pytest.mark.parametrize("name,message", [
    ("nope:max_num_seqs=1", "unknown schedule 'nope' in 'nope:max_num_seqs=1'"),
    ("fcfs:max_num_seqs", "expected field=value pairs after the colon"),
    ("fcfs:max_num_seqs=", "got 'max_num_seqs='"),
    ("fcfs:bogus=1", r"unknown option\(s\) \['bogus'\]"),
    ("fcfs:new_token_ratio=2", "new_token_ratio is 2"),
    ("fcfs:preemption=sglang2", "preemption is 'sglang2'"),
    ("fcfs:cache_in_step=maybe", "cache_in_step is 'maybe'"),
])
def test_a_bad_variant_is_refused_naming_it(name, message):
    with pytest.raises(ConfigError, match=message):
        schedule_config(name)


def test_simulate_runs_variants_side_by_side_as_the_overrides_would(tmp_path):
    from cli_runs import batchlab

    common = ("workload.params.output_len=1000", "report=false")
    result = batchlab("simulate", *common, 'schedule.names=[fcfs,"fcfs:new_token_ratio=0.7"]',
                      f"hydra.run.dir={tmp_path / 'a'}")
    assert result.returncode == 0, result.stderr
    assert "fcfs:new_token_ratio=0.7" in result.stdout
    side = json.loads((tmp_path / "a" / "summary.json").read_text())["schedules"]
    assert list(side) == ["fcfs", "fcfs:new_token_ratio=0.7"]
    result = batchlab("simulate", *common, "schedule.names=[fcfs]", "schedule.overrides.new_token_ratio=0.7",
                      f"hydra.run.dir={tmp_path / 'b'}")
    assert result.returncode == 0, result.stderr
    alone = json.loads((tmp_path / "b" / "summary.json").read_text())["schedules"]["fcfs"]
    variant = side["fcfs:new_token_ratio=0.7"]
    for key in ("makespan_s", "num_preemptions", "num_steps", "prefill_token_saving"):
        assert variant[key] == alone[key], key
    assert side["fcfs"]["num_preemptions"] != variant["num_preemptions"]
