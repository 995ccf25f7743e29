"""``model=hf model.config=PATH``: a model of the user's own, from its Hugging Face config.json."""
import json
import re

import pytest
import torch

from scheduler.errors import ConfigError
from scheduler.model_spec import ModelSpec
from test_cli_simulate import batchlab
from test_moe import QWEN3_8B

SMALL = ["workload.params.num_requests=64", "workload.params.share_degree=4", "report=false"]


def makespans(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary, {name: entry["makespan_s"] for name, entry in summary["schedules"].items()}


def test_a_config_json_simulates_as_the_preset_it_describes(tmp_path):
    checkpoint = tmp_path / "Qwen3-8B"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps(QWEN3_8B))
    runs = {}
    for label, model in (("hf", ["model=hf", f"model.config={checkpoint}"]), ("preset", ["model=qwen3-8b"])):
        result = batchlab("simulate", *model, *SMALL, f"hydra.run.dir={tmp_path / label}")
        assert result.returncode == 0, result.stderr
        runs[label] = makespans(tmp_path / label)
    assert runs["hf"][1] == runs["preset"][1]  # the same model, step for step
    assert runs["hf"][0]["model"] == "Qwen3-8B" and runs["preset"][0]["model"] == "qwen3-8b"
    # the file itself, and with YaRN, which costs nothing more
    yarn = {**QWEN3_8B, "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
    (checkpoint / "config.json").write_text(json.dumps(yarn))
    result = batchlab("simulate", "model=hf", f"model.config={checkpoint / 'config.json'}", *SMALL,
                      f"hydra.run.dir={tmp_path / 'yarn'}")
    assert result.returncode == 0, result.stderr
    assert "model Qwen3-8B (8.2B parameters, 2 bytes a weight, 144 KiB of KV a token) on h100-sxm" in result.stderr
    assert makespans(tmp_path / "yarn")[1] == runs["preset"][1]


@pytest.mark.parametrize("args, message", [
    (["model=hf"], "model=hf needs model.config=PATH"),
    (["model=hf", "model.config=nowhere/config.json"], r"nowhere/config\.json: no such file"),
    (["model=hf", "model.config={bad}"], r"malformed JSON \(Expecting ':' delimiter at line 2, column 17\)"),
    (["model=hf", "model.config={window}"], "sliding layers need sliding_window >= 1, got None"),
    (["model=hf", "model.config={window}", "model.overrides.hidden_sise=8"], "sliding_window >= 1"),
    (["model=hf", "model.config={good}", "model.overrides.hidden_sise=8"], r"unknown field\(s\) \['hidden_sise'\]"),
])
def test_bad_model_configs_are_one_clear_line(tmp_path, args, message):
    files = {"bad": '{"model_type": "qwen3",\n  "hidden_size" 8}', "good": json.dumps(QWEN3_8B),
             "window": json.dumps({**QWEN3_8B, "use_sliding_window": True, "sliding_window": None})}
    for name, text in files.items():
        (tmp_path / f"{name}.json").write_text(text)
    args = [a.format(**{name: tmp_path / f"{name}.json" for name in files}) for a in args]
    result = batchlab("simulate", *args, *SMALL, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and re.search(message, lines[0]), result.stderr


def test_the_engine_runs_a_checkpoint_from_its_own_config(tmp_path):
    """``batchlab run model=hf weights=DIR``: the checkpoint's config.json is the model (the
    architecture test_moe holds to tiny-moe's), and a RoPE the engine lacks is refused there."""
    from engine.weights import random_weights
    from scheduler.model_spec import model_spec
    from test_engine import hf_model

    spec = model_spec("tiny-moe")
    hf_model(random_weights(spec, seed=4), spec).save_pretrained(tmp_path / "ckpt")
    small = ["workload.params.num_requests=8", "workload.params.share_degree=4", "schedule.names=[fcfs]",
             "report=false"]
    result = batchlab("run", "model=hf", f"weights={tmp_path / 'ckpt'}", *small, f"hydra.run.dir={tmp_path / 'hf'}")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "hf" / "summary.json").read_text())
    assert summary["model"] == "ckpt" and summary["complete"]
    assert summary["profile_provenance"]["weights"] == str(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "longrope", "factor": 2.0, "rope_theta": 10000.0,
                                 "original_max_position_embeddings": 64}
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    result = batchlab("run", "model=hf", f"weights={tmp_path / 'ckpt'}", *small, f"hydra.run.dir={tmp_path / 'long'}")
    assert result.returncode == 2 and "RoPE type 'longrope' is not implemented by the engine" in result.stderr


def test_mistral_without_a_window_is_llama():
    """model_type mistral is taken as Llama (the engine's): transformers' two models give the same
    logits for the same weights when Mistral has no sliding window."""
    transformers = pytest.importorskip("transformers")
    dims = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    torch.manual_seed(0)
    mistral = transformers.MistralForCausalLM(transformers.MistralConfig(**dims, sliding_window=None)).eval()
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**dims)).eval()
    llama.load_state_dict(mistral.state_dict())
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(mistral(ids).logits, llama(ids).logits, atol=1e-6)
    config = {"model_type": "mistral", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 128,
              "rope_theta": 1e6, "sliding_window": None}
    assert ModelSpec.from_hf_config(config).architecture_differences(
        ModelSpec.from_hf_config({**config, "model_type": "llama"})) == []
    assert ModelSpec.from_hf_config({**config, "sliding_window": 4096}).sliding_layers == (0, 1)  # Mistral 7B v0.1's


@pytest.mark.parametrize("quant, weight_bytes", [
    ({"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}, 1.0),  # Qwen3-*-FP8
    ({"quant_method": "awq", "bits": 4, "group_size": 128}, 0.5),
    ({"quant_method": "gptq", "bits": 8}, 1.0),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, 0.5),
    ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {"num_bits": 4}}}}, 0.5),
])
def test_a_quantized_checkpoint_is_simulated_with_its_weights_bytes(quant, weight_bytes):
    from test_moe import QWEN3_30B_A3B

    config = {**QWEN3_30B_A3B, "quantization_config": quant}
    assert ModelSpec.from_hf_config(config, costs_only=True).weight_bytes == weight_bytes
    with pytest.raises(ConfigError, match="the engine runs unquantized weights only"):
        ModelSpec.from_hf_config(config)


def test_a_quantization_batchlab_cannot_size_asks_for_weight_bytes(tmp_path):
    config = {**QWEN3_8B, "quantization_config": {"quant_method": "hqq"}}
    with pytest.raises(ConfigError, match=r"'hqq': how many bits .* model\.overrides\.weight_bytes=B"):
        ModelSpec.from_hf_config(config, costs_only=True)
    assert ModelSpec.from_hf_config(config, costs_only=True, weight_bytes=0.6).weight_bytes == 0.6
    # through the command: the fp8 checkpoint's KV cache is the preset's with one byte a weight
    (tmp_path / "fp8.json").write_text(json.dumps({**QWEN3_8B, "quantization_config": {"quant_method": "fp8"}}))
    (tmp_path / "hqq.json").write_text(json.dumps(config))
    runs = {}
    for label, args in (("fp8", ["model=hf", f"model.config={tmp_path / 'fp8.json'}"]),
                        ("preset", ["model=qwen3-8b", "model.overrides.weight_bytes=1.0"]),
                        ("hqq", ["model=hf", f"model.config={tmp_path / 'hqq.json'}", "model.overrides.weight_bytes=1"])):
        result = batchlab("simulate", *args, *SMALL, "schedule.names=[fcfs]", f"hydra.run.dir={tmp_path / label}")
        assert result.returncode == 0, result.stderr
        runs[label] = json.loads((tmp_path / label / "summary.json").read_text())
    blocks = {label: summary["kv_capacity_blocks"] for label, summary in runs.items()}
    assert blocks["fp8"] == blocks["preset"] == blocks["hqq"] > 22_726  # bf16 weights leave 22,726 blocks
