"""benchmarks/soak.py: random schedules, options and KV cache sizes hold the scheduler's
invariants (a short draw of each kind here; longer ones by hand, figures in the README), and the
harness reports what fails."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak", ROOT / "benchmarks" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ok_cases(capsys) -> int:
    """The cases the last run passed, from its summary line, which must say none failed or hung."""
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "0 failed, 0 hung" in line, line
    return int(line.split(": ")[1].split(" ok")[0])


def test_the_soak_draws_every_schedule(soak):
    # (its own tuple, in the order its recorded cases were drawn in; a schedule added to the
    # scheduler and not to it would never be soaked)
    from scheduler import SCHEDULES

    assert sorted(soak.draws.SCHEDULES) == sorted(SCHEDULES)


def test_fast_forward_equals_step_by_step_over_random_cases(soak, capsys):
    # 5:3757 and 7:1267 hung (livelocks) before the two preemption fixes of 2026-12-04
    assert soak.main(["stretches", "--case", "5:3757", "--limit", "20"]) == 0
    assert soak.main(["stretches", "--case", "7:1267", "--limit", "20"]) == 0
    assert soak.main(["stretches", "--cases", "150", "--seed", "7", "--limit", "20"]) == 0
    assert ok_cases(capsys) >= 140
    # routed over 3 engines (sim/cluster.py), a router and sometimes a shared host tier drawn
    assert soak.main(["stretches", "--cases", "60", "--seed", "31", "--replicas", "3", "--limit", "20"]) == 0
    assert ok_cases(capsys) >= 55


def test_a_stretch_stops_before_evicting_what_a_hybrid_models_waiting_head_hits(soak, capsys):
    # Qwen3-Next (linear attention; its state pages cached with the KV): a stretch's decodes
    # evicted the block a blocked head's hit ended at, which cut the hit to nothing (no state
    # page before it) and let the head in a step earlier than fast-forward had counted on.
    # Both failed before scheduler/stretch.py's _safe_allocations (2026-12-04)
    for case in ("44:2014", "48:1898"):
        assert soak.main(["stretches", "--case", case, "--model", "qwen3-next-80b-a3b", "--limit", "20"]) == 0
        assert ok_cases(capsys) == 1


def test_medium_workloads_hold_fast_forward_to_step_by_step(soak, capsys):
    # --scale medium: hundreds of requests of a few hundred tokens, where a hybrid model's pages
    # matter. Each of these failed before its fix of 2026-12-04: 1:174 differed on the old
    # stretches; 1:145 raised KeyError before a loading group's prefix started its group; 2:180
    # (blend) admitted another request than step by step, a stretch having begun where the next
    # step would rank new arrivals; 2:123 livelocked: a dropped group, regrouped, took its
    # finished members along and never finished, holding its prefix's blocks
    for case, model in (("1:174", "tiny-qwen3.5"), ("1:145", "tiny-qwen3.5"), ("2:180", "llama-3.1-8b"),
                        ("2:123", "llama-3.1-8b")):
        assert soak.main(["stretches", "--scale", "medium", "--case", case, "--model", model, "--limit", "20"]) == 0
        assert ok_cases(capsys) == 1
    # replicas sharing a host tier: another's writes evicted blocks a blocked head would load,
    # which let it in sooner (it then needs fewer blocks) than a stretch had counted on
    # (6:28: two replicas' steps ended at one instant, and which of them wrote to the tier
    # first depended on whether a stretch or single steps had brought them there)
    for case, model in (("6:189", "llama-3.1-8b"), ("6:100", "tiny-qwen3.5"), ("6:28", "tiny-qwen3.5")):
        assert soak.main(["stretches", "--scale", "medium", "--case", case, "--model", model, "--replicas", "2"]) == 0
        assert ok_cases(capsys) == 1
    assert soak.main(["stretches", "--scale", "medium", "--cases", "8", "--seed", "3", "--model", "tiny-gemma3"]) == 0
    assert ok_cases(capsys) >= 7
    with pytest.raises(SystemExit) as exit_info:
        soak.main(["tokens", "--scale", "medium", "--cases", "1"])
    assert exit_info.value.code == 2 and "only with stretches" in capsys.readouterr().err


def test_the_engines_tokens_never_depend_on_the_schedule_over_random_cases(soak, capsys):
    assert soak.main(["tokens", "--cases", "12", "--seed", "7", "--limit", "30"]) == 0
    assert ok_cases(capsys) >= 10


def test_the_harness_reports_a_difference_an_error_and_a_hang(soak, capsys, monkeypatch):
    monkeypatch.setattr(soak, "stretches_case", lambda *args: "steps differ")
    assert soak.main(["stretches", "--case", "1:0"]) == 1
    assert "FAILED [1:0]" in capsys.readouterr().out

    def raising(*args):
        raise ZeroDivisionError("boom")
    monkeypatch.setattr(soak, "stretches_case", raising)
    assert soak.main(["stretches", "--case", "1:0"]) == 1
    out = capsys.readouterr().out
    assert "RAISED [1:0]" in out and "ZeroDivisionError: boom" in out

    def spinning(*args):
        while True:
            pass
    monkeypatch.setattr(soak, "stretches_case", spinning)
    assert soak.main(["stretches", "--case", "1:0", "--limit", "0.5"]) == 1
    assert "HUNG (over 0.5 s) [1:0]" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        soak.main(["stretches", "--case", "1-0"])
    assert exit_info.value.code == 2 and "expected SEED:INDEX" in capsys.readouterr().err


def test_the_triton_backend_gives_the_torch_engines_tokens_in_a_drawn_case(soak, capsys):
    # --backend triton: the engine's Triton kernels (Triton's interpreter here) under a drawn
    # schedule, options and shared-prefix kernel options against fcfs on torch with room for all.
    # Case 6:0 (a prefix tree of 6 requests, prefix_grouped with SGLang's steps apart, 16-token
    # blocks; the kernel's fused merge, 4 pages, 2 prefix blocks a split) calls the shared-prefix
    # kernel 12 times; about 6 s here
    pytest.importorskip("triton")
    import kernels.backend

    kernel = kernels.backend.shared_prefix_decode_attention
    assert soak.main(["tokens", "--backend", "triton", "--case", "6:0", "--limit", "300"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("tokens (tiny, triton): 1 ok (1 of them ran the shared-prefix kernel), 0 refused"), line
    assert "0 failed, 0 hung" in line
    assert kernels.backend.shared_prefix_decode_attention is kernel  # the soak's counter taken off again
    with pytest.raises(SystemExit):
        soak.main(["stretches", "--backend", "triton", "--case", "6:0"])
    assert "--backend triton: only with tokens" in capsys.readouterr().err
