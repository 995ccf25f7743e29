"""The Triton kernels' options as a config sets them (conf/kernels/default.yaml): checked when
the backend is made, every option in force recorded, refused by the torch backend. (That the
engine gives the same tokens with them: tests/test_kernels.py.)"""
import pytest
from omegaconf import OmegaConf

pytest.importorskip("triton")

from batchlab.command import kernel_options_of  # noqa: E402
from engine.attention import make_backend  # noqa: E402
from scheduler.errors import ConfigError  # noqa: E402


def test_the_triton_backend_takes_the_shared_prefix_kernels_options_and_records_them_all():
    defaults = make_backend("triton").options["shared_prefix"]
    assert defaults["pages"] == 1 and defaults["fused_merge"] is False and defaults["members_per_program"] is None
    chosen = make_backend("triton", {"shared_prefix": {"pages": 2, "fused_merge": True}}).options["shared_prefix"]
    assert chosen == {**defaults, "pages": 2, "fused_merge": True}
    assert make_backend("torch").options == {}


@pytest.mark.parametrize("backend, options, message", [
    ("torch", {"shared_prefix": {"pages": 2}}, "backend=torch has none"),
    ("triton", {"shared_prefix": {"pages": 3}}, "kernels.shared_prefix: pages is 3; expected a power of two"),
    ("triton", {"shared_prefix": {"fused_merge": "yes"}}, "fused_merge is 'yes'; expected true or false"),
    ("triton", {"shared_prefix": {"page": 2}}, "unknown shared-prefix kernel option 'page'; expected one of"),
    ("triton", {"paged_decode": {"pages": 2}}, r"kernel options for \['paged_decode'\]"),
    ("triton", {"shared_prefix": {"num_warps": 3}}, "num_warps is 3; expected a power of two up to 32, or None")])
def test_bad_kernel_options_are_refused(backend, options, message):
    with pytest.raises(ConfigError, match=message):
        make_backend(backend, options)


def test_a_config_sets_only_the_options_it_names():
    assert kernel_options_of(OmegaConf.create({})) == {}
    unset = {"kernels": {"shared_prefix": {"pages": None, "fused_merge": None}}}
    assert kernel_options_of(OmegaConf.create(unset)) == {}
    given = {"kernels": {"shared_prefix": {"pages": 2, "fused_merge": None, "members_per_program": 4}}}
    assert kernel_options_of(OmegaConf.create(given)) == {"shared_prefix": {"pages": 2, "members_per_program": 4}}
    with pytest.raises(ConfigError, match="kernels.shared_prefix is 3; expected its options"):
        kernel_options_of(OmegaConf.create({"kernels": {"shared_prefix": 3}}))


def test_the_sweeps_best_setting_comes_back_as_overrides_the_config_takes():
    """benchmarks/best_shared_prefix.py on the committed H200 results: its overrides, merged into
    conf/kernels/default.yaml as Hydra would, make a backend running that setting."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("best_shared_prefix", root / "benchmarks" / "best_shared_prefix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = json.loads((root / "benchmarks/results/kernels-NVIDIA-H200-2026-12-04.json").read_text())
    overrides = module.best_overrides(results)
    # that day's best by device time: 4 warps, 2 stages, 16 blocks a split, 2 blocks a loop iteration
    assert overrides == ["kernels.shared_prefix.num_warps=4", "kernels.shared_prefix.num_stages=2",
                         "kernels.shared_prefix.prefix_blocks_per_split=16", "kernels.shared_prefix.pages=2"]
    config = OmegaConf.create({"kernels": OmegaConf.load(root / "conf/kernels/default.yaml")})
    OmegaConf.set_struct(config, True)  # as Hydra composes it: an unknown key would be refused
    config = OmegaConf.merge(config, OmegaConf.from_dotlist(overrides + ["kernels.shared_prefix.fused_merge=true"]))
    options = make_backend("triton", kernel_options_of(config)).options["shared_prefix"]
    assert (options["num_warps"], options["num_stages"], options["prefix_blocks_per_split"], options["pages"],
            options["fused_merge"], options["members_per_program"]) == (4, 2, 16, 2, True, None)
    with pytest.raises(ValueError, match="no shared_prefix_sweep"):
        module.best_overrides({})
    # a faster row whose output was not the per-request kernel's is passed over, and none right is said
    fast_wrong = {"pages": 4, "ms": 0.05, "device_ms": 0.04, "relative_error": 0.6}
    slow_right = {"pages": 2, "ms": 0.09, "device_ms": 0.08, "relative_error": 0.004}
    assert module.best_overrides({"shared_prefix_sweep": [fast_wrong, slow_right]}) == ["kernels.shared_prefix.pages=2"]
    with pytest.raises(ValueError, match="no setting of the sweep matched the per-request output"):
        module.best_overrides({"shared_prefix_sweep": [fast_wrong]})
    # a merge sweep row's options come back too, and the config takes them
    merged = {**slow_right, "device_ms": 0.07, "fp32_partials": False, "merge_eager": True, "merge_rows": 4,
              "merge_warps": None}
    overrides = module.best_overrides({"shared_prefix_sweep": [slow_right, merged]})
    assert overrides == ["kernels.shared_prefix.pages=2", "kernels.shared_prefix.fp32_partials=false",
                         "kernels.shared_prefix.merge_eager=true", "kernels.shared_prefix.merge_rows=4",
                         "kernels.shared_prefix.merge_warps=null"]
    config = OmegaConf.merge(OmegaConf.create({"kernels": OmegaConf.load(root / "conf/kernels/default.yaml")}),
                             OmegaConf.from_dotlist(overrides))
    options = make_backend("triton", kernel_options_of(config)).options["shared_prefix"]
    assert (options["fp32_partials"], options["merge_eager"], options["merge_rows"]) == (False, True, 4)


def test_a_profile_from_before_an_option_existed_is_taken_as_measured_at_its_default():
    """A profile records every kernel option in force; options added to the kernel later ran, when
    it was measured, as their defaults do: filled in so, the run at the defaults takes it, and one
    with a new option set elsewhere is refused naming it."""
    from pathlib import Path

    from batchlab.command import recorded_kernel_options
    from sim.profile import Profile
    from sim.profile_check import check_profile_matches
    from scheduler.model_spec import model_spec

    in_force = make_backend("triton").options
    older = {"shared_prefix": {name: value for name, value in in_force["shared_prefix"].items()
                               if name not in ("fp32_partials", "merge_eager", "merge_rows", "merge_warps")}}
    assert recorded_kernel_options(older) == in_force
    assert recorded_kernel_options(None) is None and recorded_kernel_options({}) == {}
    renamed = {"shared_prefix": {**older["shared_prefix"], "blocks": 2}}  # an option since removed: as recorded
    assert recorded_kernel_options(renamed) == renamed
    profile = Profile.load(Path(__file__).resolve().parents[1] / "profiles/tiny-cpu-float32-torch")
    profile.provenance["kernel_options"] = recorded_kernel_options(older)
    check_profile_matches(profile, model_spec("tiny"), "float32", in_force)
    narrow = make_backend("triton", {"shared_prefix": {"fp32_partials": False}}).options
    with pytest.raises(ConfigError, match=r"shared_prefix.fp32_partials: True there, False here"):
        check_profile_matches(profile, model_spec("tiny"), "float32", narrow)


@pytest.mark.parametrize("command", ["run", "profile", "validate"])
def test_each_engine_command_refuses_a_bad_kernel_option_before_it_loads_anything(command, tmp_path):
    from cli_runs import batchlab

    out = [f"out={tmp_path / 'profile'}"] if command == "profile" else [f"hydra.run.dir={tmp_path}"]
    result = batchlab(command, "backend=triton", "kernels.shared_prefix.members_per_program=3", *out)
    assert result.returncode != 0
    assert "kernels.shared_prefix: members_per_program is 3; expected a power of two or None" in result.stderr
    assert not (tmp_path / "profile" / "profile.json").exists() and not (tmp_path / "config.yaml").exists()


def test_a_run_with_kernel_options_finishes_and_records_every_option_in_force(tmp_path):
    """`batchlab run backend=triton kernels.shared_prefix...` end to end (on CPU the kernels run in
    Triton's interpreter): every request finishes and the run records every option in force.
    (That the tokens are the torch backend's with such options: tests/test_kernels.py.)"""
    import json

    from cli_runs import batchlab

    small = ["backend=triton", "workload.params.num_requests=8", "workload.params.share_degree=4",
             "workload.params.prefix_len=32", "workload.params.distinct_len=16", "workload.params.output_len=4",
             "schedule.names=[batchllm]", "report=false", "progress=false"]
    for name, options in (("default", []), ("fused", ["kernels.shared_prefix.fused_merge=true",
                                                      "kernels.shared_prefix.members_per_program=1",
                                                      "kernels.shared_prefix.prefix_blocks_per_split=1"])):
        result = batchlab("run", *small, *options, f"hydra.run.dir={tmp_path / name}")
        assert result.returncode == 0, result.stderr
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["schedules"]["batchllm"]["num_requests"] == 8
        recorded = summary["profile_provenance"]["kernel_options"]["shared_prefix"]
        assert recorded["fused_merge"] is (name == "fused") and recorded["pages"] == 1
        assert recorded["members_per_program"] == (1 if name == "fused" else None)
        assert recorded["prefix_blocks_per_split"] == (1 if name == "fused" else 32)


def test_the_sweeps_settings_are_the_kernels_and_precompiling_says_what_failed(monkeypatch):
    """bench_kernels.py's sweeps take only options the kernels accept (a GPU call would meet a
    misspelt one late), and benchmarks/precompile.py's worker, run here in the interpreter,
    calls each task once and says which failed rather than raising."""
    from pathlib import Path

    from kernels.shared_prefix import check_options

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from shared_prefix_case import MERGE_DEFAULTS, merge_sweep, merge_warmups, per_request_sweep, shared_sweep
    from precompile import warm

    gpu_settings = shared_sweep(dry=False)
    assert len(gpu_settings) == len({tuple(sorted(o.items(), key=str)) for o in gpu_settings}) == 110
    for options in gpu_settings:
        check_options(options)
    # the merge's options, timed on the kernel sweep's best right settings: a wrong faster row is
    # passed over; the launched merge's best gets every merge option but the defaults, the fused
    # one's only the partials' dtype and the one-trip read
    rows = [{**options, "relative_error": 0.0} for options in gpu_settings]
    launched = [row for row in rows if not row["fused_merge"]]
    wrong = {**launched[0], "relative_error": 0.5}
    merges = merge_sweep([wrong] + launched[1:] + [row for row in rows if row["fused_merge"]], dry=False)
    assert len(merges) == 4 * 9 - 1 + 3
    for options in merges + merge_warmups(dry=False):
        check_options(options)
    kernels = {tuple((name, options[name]) for name in gpu_settings[0]) for options in merges}
    first_fused = next(row for row in rows if row["fused_merge"])
    assert kernels == {tuple((name, row[name]) for name in gpu_settings[0]) for row in (launched[1], first_fused)}
    assert not [options for options in merges if {k: options[k] for k in MERGE_DEFAULTS} == MERGE_DEFAULTS]
    assert {(o["merge_rows"], o["merge_warps"]) for o in merges if o["fused_merge"]} == {(1, None)}
    shape = (4, 2, 16, 16)  # the dry run's heads, kv heads, head size, block size
    failed = warm([("shared", shared_sweep(dry=True)[3]), ("shared", {"pages": 3}),
                   ("per_request", per_request_sweep(dry=True)[0]), ("per_request", {"blocks": 2})], shape, dry=True)
    assert len(failed) == 2
    assert failed[0].startswith("shared {'pages': 3}: ValueError: pages is 3; expected a power of two")
    assert failed[1].startswith("per_request {'blocks': 2}: TypeError")
