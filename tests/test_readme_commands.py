"""Every `batchlab simulate|plan|run|validate|profile|calibrate` command the README shows
composes against conf/: a key renamed or removed in the configs, and not in the README, fails
here (Hydra refuses keys a config does not have). Commands with placeholders the reader fills in
(`...`, `<date>`, `{...}`), continued lines and launchers that are plugins are left out."""
import re
import shlex
from pathlib import Path

import pytest

from batchlab.cli import hydra_overrides
from batchlab.command import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("simulate", "plan", "run", "validate", "profile", "calibrate")
PATTERN = re.compile(rf"batchlab (?:{'|'.join(COMMANDS)})\b[^`|\n]*")


def readme_commands() -> list[str]:
    found = []
    for match in PATTERN.finditer((ROOT / "README.md").read_text()):
        command = match.group(0).split("  #")[0].strip()
        if command.endswith("\\") or any(mark in command for mark in ("...", "<", "{", "--multirun")):
            continue
        if command not in found:
            found.append(command)
    return found


def test_the_readme_shows_commands_to_check():
    commands = readme_commands()
    assert len(commands) > 30
    assert "batchlab simulate +experiment=mooncake_replay host_kv_gb=1024" in commands


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_composes(command):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    words = shlex.split(command)
    name = words[1]
    # hydra.* settings (run directories) are not part of the job's config
    overrides = [w for w in hydra_overrides(words[2:]) if not w.startswith("hydra.")]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)  # conf/<command>.yaml
    assert cfg is not None
