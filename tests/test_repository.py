"""The repository's own promises: the README's commands and CI agree; the dependency rule."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    lines = (ROOT / "README.md").read_text().splitlines()
    test_command = lines[1].strip()
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_scheduler_imports_only_stdlib_and_numpy():
    forbidden = re.compile(r"^\s*(import|from)\s+(torch|simpy|hydra|triton|pandas|sim|engine|kernels|traces|reports)\b")
    clock = re.compile(r"time\.(time|monotonic|perf_counter)\(")
    for path in (ROOT / "scheduler").glob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not forbidden.match(line), f"{path.name}:{number}: {line}"
            assert not clock.search(line), f"{path.name}:{number}: reads a clock"


def test_sim_and_engine_keep_apart():
    """DESIGN.md: sim/ never imports torch or engine/; engine/ never imports simpy or sim/."""
    rules = {"sim": r"torch|engine|kernels", "engine": r"simpy|sim"}
    for package, names in rules.items():
        forbidden = re.compile(rf"^\s*(import|from)\s+({names})\b")
        for path in (ROOT / package).glob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                assert not forbidden.match(line), f"{package}/{path.name}:{number}: {line}"
