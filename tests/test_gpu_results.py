"""benchmarks/take_gpu_results.py: what a GPU call of benchmarks/gpu_session.sh brings back,
filed where the repository keeps it (the next GPU session's first step after its call)."""
import importlib.util
import io
import json
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load():
    spec = importlib.util.spec_from_file_location("take_gpu_results", ROOT / "benchmarks" / "take_gpu_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call_output(folder: Path) -> Path:
    """A `tune` call's $OUT as the device tool returns it: the archive of the stages' folders,
    the kernel results beside it (the shipped H200 profile stands in for the measured one)."""
    profile = ROOT / "profiles" / "llama-3.1-8b-cuda-bfloat16-triton"
    members = {
        "./tests/kernel_tests.log": b"...\n===== 120 passed in 61.2s =====\n",
        "./best.txt": b"== the fastest setting of the sweep: kernels.shared_prefix.pages=2\n",
        "./profile/profile/profile.json": (profile / "profile.json").read_bytes(),
        "./profile/profile/tables.npz": (profile / "tables.npz").read_bytes(),
        "./validate/validate/validation.json": json.dumps({"device": "NVIDIA H200", "offline": True}).encode(),
        "./validate/validate/validation.md": b"# offline\n",
        "./validate/validate/report.md": b"not filed\n",
        "./online/validate/validation.json": json.dumps({"device": "NVIDIA H200", "offline": False}).encode(),
        "./online/validate/validation.md": b"# online\n",
    }
    folder.mkdir()
    with tarfile.open(folder / "gpu_results.tar.gz", "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    sweep = [{"pages": 2, "device_ms": 0.05, "device_speedup": 6.0}]
    (folder / "kernels-shared-prefix-NVIDIA-H200-2026-12-09.json").write_text(json.dumps(
        {"date": "2026-12-09", "shared_prefix": {"device_speedup": 3.2, "best_over_best_device_speedup": 5.5},
         "shared_prefix_sweep": sweep, "shared_prefix_batch": [{"prefixes": 32, "decodes": 512, "device_speedup": 7.5}]}))
    return folder


def test_a_calls_results_are_filed_under_their_names_and_the_figures_printed(tmp_path, capsys):
    module = load()
    files_at, repo = call_output(tmp_path / "out"), tmp_path / "repo"
    assert module.main([str(files_at), "--root", str(repo)]) == 0
    results = repo / "benchmarks" / "results"
    assert sorted(path.name for path in results.iterdir()) == [
        "kernels-shared-prefix-NVIDIA-H200-2026-12-09.json",
        "validate-llama-3.1-8b-NVIDIA-H200-2026-12-09-offline.json",
        "validate-llama-3.1-8b-NVIDIA-H200-2026-12-09-offline.md",
        "validate-llama-3.1-8b-NVIDIA-H200-2026-12-09-online.json",
        "validate-llama-3.1-8b-NVIDIA-H200-2026-12-09-online.md"]
    assert json.loads((results / "validate-llama-3.1-8b-NVIDIA-H200-2026-12-09-online.json").read_text())["offline"] \
        is False
    profile = repo / "profiles" / "llama-3.1-8b-cuda-bfloat16-triton"
    assert (profile / "tables.npz").read_bytes() == \
        (ROOT / "profiles" / "llama-3.1-8b-cuda-bfloat16-triton" / "tables.npz").read_bytes()
    printed = capsys.readouterr().out
    assert "120 passed in 61.2s" in printed and "kernels.shared_prefix.pages=2" in printed
    assert "3.2x at the defaults (device time), 6.0x at the sweep's best, 5.5x against" in printed
    assert "at 32 prefixes (512 decodes): 7.5x" in printed


def test_a_folder_without_the_archive_is_refused(tmp_path, capsys):
    assert load().main([str(tmp_path)]) == 1
    assert "gpu_results.tar.gz: no such archive" in capsys.readouterr().err
    assert load().main([]) == 2 and "usage:" in capsys.readouterr().err
