"""Files what a GPU call of ``benchmarks/gpu_session.sh`` (``tune``, ``all``, ``sweep``,
``measure``) brought back where the repository keeps such results, and prints the figures owed:

    python benchmarks/take_gpu_results.py FILES_AT [--root REPO] [--model NAME]

FILES_AT: the folder the device tool copied the call's $OUT into (``gpu_results.tar.gz`` and
the result JSONs beside it). It writes
- each ``kernels-*.json`` and ``shared-prefix-parts-*.json`` beside the archive into
  ``benchmarks/results/``;
- the measured profile (the archive's ``profile/profile/``) into
  ``profiles/<model>-<cuda|cpu>-<dtype>-<backend>/``, as its provenance names them;
- the offline validation (``validate/validate/validation.{json,md}``, its scatter plot) and the
  online one (``online/validate/validation.{json,md}``) as
  ``benchmarks/results/validate-<model>-<device>-<date>-{offline,online}.*``;
and nothing else (the logs and run records stay in the archive). The date is the kernel
results' (else the profile's, else today's). Then: make the sweep's fastest setting (printed
here) kernels/shared_prefix.py's defaults, point tests/test_h200_profile.py at the new offline
validation, and put the figures in the README and the issue's note.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import tarfile
import tempfile
from datetime import date
from pathlib import Path


def take(files_at: Path, root: Path, model: str = "llama-3.1-8b") -> list[Path]:
    """Files the results under ``files_at`` into the repository at ``root``; the paths written."""
    archive = files_at / "gpu_results.tar.gz"
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: no such archive (the GPU call's $OUT holds it)")
    written: list[Path] = []
    results = root / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    kernel_files = sorted([*files_at.glob("kernels-*.json"), *files_at.glob("shared-prefix-parts-*.json")])
    when = None
    for path in kernel_files:
        when = when or json.loads(path.read_text()).get("date")
        written.append(Path(shutil.copy(path, results / path.name)))
    with tempfile.TemporaryDirectory() as work:
        with tarfile.open(archive) as tar:
            tar.extractall(work, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        work = Path(work)
        profile = work / "profile" / "profile"
        if (profile / "profile.json").is_file():
            provenance = json.loads((profile / "profile.json").read_text())["provenance"]
            model = provenance["model_config"]["name"]
            when = when or provenance.get("date")
            kind = "cpu" if provenance["device"].startswith("cpu") else "cuda"
            target = root / "profiles" / f"{model}-{kind}-{provenance['dtype']}-{provenance['backend']}"
            target.mkdir(parents=True, exist_ok=True)
            for path in sorted(profile.iterdir()):
                written.append(Path(shutil.copy(path, target / path.name)))
        when = when or date.today().isoformat()
        for mode, folder in (("offline", work / "validate" / "validate"), ("online", work / "online" / "validate")):
            validation = folder / "validation.json"
            if not validation.is_file():
                continue
            device = re.sub(r"[^A-Za-z0-9._]+", "-", json.loads(validation.read_text()).get("device", "unknown"))
            device = device.strip("-")  # "NVIDIA H200": NVIDIA-H200; "cpu (x86_64)": cpu-x86_64
            stem = f"validate-{model}-{device}-{when}-{mode}"
            for name, suffix in (("validation.json", ".json"), ("validation.md", ".md"),
                                 ("validation_scatter.png", ".png")):
                if (folder / name).is_file():
                    written.append(Path(shutil.copy(folder / name, results / f"{stem}{suffix}")))
    return written


def summary(files_at: Path) -> list[str]:
    """The figures owed, from what the call brought back: the kernel tests' last line, the
    sweep's fastest setting, the shared-prefix speed-ups (at more prefixes too)."""
    lines = []
    with tarfile.open(files_at / "gpu_results.tar.gz") as tar:
        names = tar.getnames()
        for name, pick in (("./tests/kernel_tests.log", lambda text: [line for line in text.splitlines()
                                                                       if " passed" in line or " failed" in line][-1:]),
                           ("./best.txt", lambda text: text.splitlines())):
            if name in names:
                lines += pick(tar.extractfile(name).read().decode(errors="replace"))
    for path in sorted(files_at.glob("kernels-*.json")):
        results = json.loads(path.read_text())
        shared, sweep = results.get("shared_prefix", {}), results.get("shared_prefix_sweep") or [{}]
        lines.append(f"{path.name}: shared prefix {shared.get('device_speedup')}x at the defaults (device time), "
                     f"{sweep[0].get('device_speedup')}x at the sweep's best, "
                     f"{shared.get('best_over_best_device_speedup')}x against the per-request kernel at its best")
        lines += [f"  at {row['prefixes']} prefixes ({row['decodes']} decodes): {row['device_speedup']}x"
                  for row in results.get("shared_prefix_batch") or []]
    return lines


def main(argv: list[str]) -> int:
    args = list(argv)
    options = {}
    for flag in ("--root", "--model"):
        if flag in args:
            index = args.index(flag)
            options[flag] = args[index + 1] if index + 1 < len(args) else ""
            del args[index:index + 2]
    if len(args) != 1 or "" in options.values():
        print("usage: python benchmarks/take_gpu_results.py FILES_AT [--root REPO] [--model NAME]", file=sys.stderr)
        return 2
    files_at = Path(args[0])
    root = Path(options.get("--root") or Path(__file__).resolve().parents[1])
    try:
        written = take(files_at, root, options.get("--model", "llama-3.1-8b"))
        lines = summary(files_at)
    except (OSError, KeyError, ValueError, tarfile.TarError) as error:
        print(f"take_gpu_results: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"written: {path}")
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
