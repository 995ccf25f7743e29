"""``batchlab import``: a user's prompts (token ids, text, chat, OpenAI Batch lines) as a workload."""
from __future__ import annotations

import json

import pytest

from batchlab.cli import main
from traces.build import load_file
from traces.errors import TraceError
from traces.prompt_records import read_prompt_records

CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant:{% endif %}")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A byte-level BPE tokenizer trained here (no downloads), saved as Hugging Face saves one."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["the quick brown fox jumps over the lazy dog, said the system"] * 20, trainer)
    # a BOS before every encoded text, as Llama's tokenizers add (and generated text has not)
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    directory = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(directory)
    return directory


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_openai_batch_chat_lines_use_the_chat_template_and_max_tokens(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    system = {"role": "system", "content": "the quick brown fox " * 30}
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "m", "max_tokens": 50 + i,
                       "messages": [system, {"role": "user", "content": f"dog {i} jumps"}]}} for i in range(3)]
    records = list(read_prompt_records(write_lines(tmp_path / "batch.jsonl", lines), tokenizer_dir))
    reference = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    for i, record in enumerate(records):
        expected = reference.apply_chat_template(lines[i]["body"]["messages"], add_generation_prompt=True,
                                                 tokenize=True)
        expected = expected["input_ids"] if hasattr(expected, "keys") else expected
        assert record.tokens.tolist() == list(expected)
        assert (record.output_len, record.output_from, record.prompt_from) == (50 + i, "limit (max_tokens)",
                                                                               "chat messages")
        assert record.line == i + 1 and record.arrival_s == 0.0


def test_token_ids_text_counts_and_generated_outputs(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    lines = [{"input_ids": [5, 6, 7], "output_len": 4, "arrival_s": 1.5},
             {"prompt": "the lazy dog", "completion": "jumps over the fox", "max_tokens": 999},
             {"text": "the fox", "output_token_ids": [1, 2, 3, 4, 5]},
             {"prompt": [9, 8], "max_new_tokens": 7}]
    records = list(read_prompt_records(write_lines(tmp_path / "mixed.jsonl", lines), tokenizer_dir))
    assert [r.tokens.tolist() for r in records] == [
        [5, 6, 7], reference("the lazy dog")["input_ids"], reference("the fox")["input_ids"], [9, 8]]
    assert records[1].tokens[0] == 1  # the prompt's BOS
    # what was generated wins over a limit
    generated = reference("jumps over the fox", add_special_tokens=False)["input_ids"]
    assert [r.output_len for r in records] == [4, len(generated), 5, 7]
    assert [r.arrival_s for r in records] == [1.5, 0.0, 0.0, 0.0]
    assert [r.prompt_from for r in records] == ["token ids (input_ids)", "text (prompt)", "text (text)",
                                                "token ids (prompt)"]


@pytest.mark.parametrize("line, message", [
    ({"question": "x", "output_len": 3}, "no prompt"),
    ({"input_ids": [1, 2]}, "no output length"),
    ({"input_ids": [1, 2], "max_tokens": 0}, "max_tokens is 0"),
    ({"input_ids": [1, -2], "output_len": 3}, "token ids must lie"),
    ({"prompt_token_ids": [1, 2, "x"], "output_len": 3},
     r"prompt_token_ids has item 2 'x'; expected a non-empty list of integer token ids"),
    ({"input_ids": [], "output_len": 3}, "input_ids is empty; expected"),
    ({"body": {"token_ids": "1 2 3"}, "output_len": 3}, "token_ids is str '1 2 3'; expected"),
    ({"prompt": [1, 2.0], "output_len": 3}, "prompt has item 1 2.0; expected"),
    ({"input_ids": [1], "output_token_ids": [4, None]}, "output_token_ids has item 1 None; expected"),
    ({"input_ids": [1, 2], "output_len": 3, "arrival_s": -1}, "arrival_s is -1"),
    ({"prompt": "some text", "output_len": 3}, "tokenizer directory"),
    ({"input_ids": [1, 2], "output_len": 3, "priority": "high"}, "priority is 'high'; expected a finite number"),
])
def test_bad_lines_name_the_file_line_and_what_was_expected(tmp_path, line, message):
    path = write_lines(tmp_path / "bad.jsonl", [{"input_ids": [1], "output_len": 1}, line])
    with pytest.raises(TraceError, match=message) as raised:
        list(read_prompt_records(path))
    assert raised.value.line == 2 and str(raised.value).startswith(f"{path}:2: ")


def test_malformed_generated_token_ids_are_an_error_not_the_default_length(tmp_path):
    """A default output length stands in only where a line gives none, not for one it gives wrong."""
    path = write_lines(tmp_path / "bad.jsonl", [{"input_ids": [1], "completion_token_ids": "7 8 9"}])
    with pytest.raises(TraceError, match="completion_token_ids is str '7 8 9'; expected"):
        list(read_prompt_records(path, output_len=5))
    good = write_lines(tmp_path / "good.jsonl", [{"input_ids": [1], "completion_token_ids": [7, 8, 9]}, {"input_ids": [2]}])
    assert [r.output_len for r in read_prompt_records(good, output_len=5)] == [3, 5]


def test_a_lines_priority_reaches_its_request(tmp_path):
    """vLLM takes a priority per request (the OpenAI API's body too); schedule priority reads it."""
    from traces.prompt_records import load_prompts

    path = write_lines(tmp_path / "p.jsonl", [{"input_ids": [1, 2], "output_len": 3, "priority": 2},
                                              {"input_ids": [3], "output_len": 3},
                                              {"custom_id": "x", "body": {"input_ids": [4], "max_tokens": 2,
                                                                          "priority": -1.5}}])
    workload, records = load_prompts(path)
    assert [r.priority for r in records] == [2, None, -1.5]
    assert [r.priority for r in workload.requests] == [2, None, -1.5]


def test_default_output_length_and_limit(tmp_path):
    path = write_lines(tmp_path / "ids.jsonl", [{"token_ids": [i, i + 1]} for i in range(5)])
    records = list(read_prompt_records(path, output_len=9, limit=3))
    assert [(r.output_len, r.output_from) for r in records] == [(9, "default")] * 3


def test_import_command_writes_a_workload_that_shares_the_common_prefixes(tmp_path, capsys):
    shared = list(range(100, 164))  # 64 tokens every prompt starts with
    lines = [{"prompt_token_ids": shared + [i] * 5, "output_len": 3} for i in range(8)]
    lines.append({"prompt_token_ids": shared[:10], "output_len": 2})  # a strict prefix of the others
    source = write_lines(tmp_path / "prompts.jsonl", lines)
    for suffix in (".jsonl", ".parquet"):
        output = tmp_path / f"workload{suffix}"
        assert main(["import", str(source), str(output)]) == 0
        requests = load_file(output).requests
        assert [r.prompt for r in requests[:2]] == [((0, 10), (1, 54), (2, 5)), ((0, 10), (1, 54), (3, 5))]
        assert requests[8].prompt == ((0, 10),) and [r.output_len for r in requests] == [3] * 8 + [2]
    printed = capsys.readouterr().out
    distinct = 64 + 8 * 5
    assert f"prefix sharing: {distinct:,} distinct prompt tokens of {8 * 69 + 10:,}" in printed
    assert "workload.path=" in printed and not list(tmp_path.glob(".*partial"))


def test_import_command_errors_and_an_interrupted_write_leaves_nothing(tmp_path, capsys, monkeypatch):
    source = write_lines(tmp_path / "p.jsonl", [{"input_ids": [1, 2, 3]}])
    assert main(["import", str(source), str(tmp_path / "w.csv")]) == 2
    assert main(["import", str(source), str(tmp_path / "w.jsonl")]) == 2
    assert "p.jsonl:1: no output length" in capsys.readouterr().err

    import traces.native

    def interrupted(workload, path):
        path.write_text("half a line")
        raise KeyboardInterrupt

    monkeypatch.setattr(traces.native, "save_jsonl", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["import", str(source), str(tmp_path / "w.jsonl"), "--output-len", "4"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


def test_prompts_workload_kind_reads_the_file_directly(tmp_path, tokenizer_dir):
    from traces.build import build_workload

    lines = [{"messages": [{"role": "user", "content": "the quick brown fox " * 8 + str(i)}]} for i in range(6)]
    source = write_lines(tmp_path / "chat.jsonl", lines)
    spec = {"kind": "prompts", "path": "chat.jsonl", "tokenizer": str(tokenizer_dir), "output_len": 5, "limit": 4,
            "arrivals": {"process": "poisson", "rate": 2.0, "cv": 1.0, "scale": 1.0, "seed": 0}}
    workload = build_workload(spec, base_dir=tmp_path)
    assert len(workload) == 4 and {r.output_len for r in workload.requests} == {5}
    assert workload.requests[-1].arrival_s > 0  # re-timed by the arrival process
    first, second = (r.prompt for r in workload.requests[:2])
    assert first[0] == second[0] and first[1:] != second[1:]  # the chat's common start is one segment
    with pytest.raises(TraceError, match="workload.tokenizer=DIR"):
        build_workload({**spec, "tokenizer": None}, base_dir=tmp_path)
    assert source.exists()


def test_the_engine_reads_the_prompts_tokens_and_generates_what_transformers_does(tmp_path, tokenizer_dir):
    """workload=prompts carries the prompts' real token ids to the engine: its greedy tokens,
    under any schedule, are those of transformers' LlamaForCausalLM fed the same ids."""
    import numpy as np
    import torch
    from test_engine import hf_model

    from engine.loop import run_engine
    from engine.runner import ModelRunner
    from engine.tokens import prompt_tokens
    from engine.weights import random_weights
    from scheduler import schedule_config
    from scheduler.errors import ConfigError
    from scheduler.model_spec import model_spec
    from traces.prompt_records import load_prompts

    system = "the system said: the quick brown fox jumps over the lazy dog. " * 3
    texts = [system + tail for tail in ("the dog", "the fox jumps", "over the lazy", "brown")] + ["a lazy dog said"]
    path = write_lines(tmp_path / "batch.jsonl", [{"prompt": text, "max_tokens": 5} for text in texts])
    workload, records = load_prompts(path, tokenizer_dir)
    spec = model_spec("tiny")
    table = workload.segment_tokens
    for request, record in zip(workload.requests, records):  # the table rebuilds every prompt exactly
        assert np.array_equal(prompt_tokens(request.prompt, 0, request.prompt_len, spec.vocab_size, table),
                              record.tokens)
    assert not np.array_equal(prompt_tokens(workload.requests[0].prompt, 0, 8, spec.vocab_size), records[0].tokens[:8])

    weights = random_weights(spec, seed=5)
    reference = hf_model(weights, spec)
    expected = {}
    with torch.no_grad():
        for request, record in zip(workload.requests, records):
            ids = torch.as_tensor(record.tokens.astype(np.int64))[None]
            for _ in range(request.output_len):
                ids = torch.cat([ids, reference(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            expected[request.req_id] = tuple(ids[0, len(record.tokens):].tolist())
    for schedule in ("fcfs", "batchllm"):
        runner = ModelRunner(spec, 64, 16, weights=weights)
        run_engine(workload, schedule_config(schedule, max_num_batched_tokens=32), runner, 64, 16)
        assert {r: tuple(t) for r, t in runner.outputs.items()} == expected, schedule

    small = model_spec("tiny", vocab_size=64)  # the tokenizer's ids go up to ~400
    with pytest.raises(ConfigError, match="outside the model's vocabulary of 64"):
        run_engine(workload, schedule_config("fcfs"), ModelRunner(small, 64, 16), 64, 16)


def test_texts_tokenized_in_batches_give_each_record_its_own_tokens(tmp_path, tokenizer_dir, monkeypatch):
    # records of every kind, mixed, read with batches that split them anywhere: the same records
    import traces.prompt_records as prompt_records

    lines = []
    for i in range(9):
        kind = i % 3
        if kind == 0:
            lines.append({"prompt": f"the quick brown fox {i} " * (i + 1), "completion": "jumps over " * i + "dog"})
        elif kind == 1:
            lines.append({"messages": [{"role": "user", "content": f"lazy dog {i}"}], "max_tokens": i + 1})
        else:
            lines.append({"prompt_token_ids": list(range(i, 3 * i + 1)), "output_len": i})
    path = write_lines(tmp_path / "mixed.jsonl", lines)
    whole = list(read_prompt_records(path, tokenizer_dir))
    from transformers import AutoTokenizer  # each record as the tokenizer makes it, one at a time

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    for record, line in zip(whole, lines):
        if "prompt" in line:
            assert record.tokens.tolist() == tok(line["prompt"])["input_ids"]
            assert record.output_len == len(tok(line["completion"], add_special_tokens=False)["input_ids"])
        elif "messages" in line:
            ids = tok.apply_chat_template(line["messages"], add_generation_prompt=True, tokenize=True)
            assert record.tokens.tolist() == list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    for batch in (1, 2, 4):
        monkeypatch.setattr(prompt_records, "BATCH", batch)
        again = list(read_prompt_records(path, tokenizer_dir))
        assert [(r.line, r.tokens.tolist(), r.output_len, r.prompt_from, r.output_from) for r in again] == \
            [(r.line, r.tokens.tolist(), r.output_len, r.prompt_from, r.output_from) for r in whole]
    monkeypatch.setattr(prompt_records, "BATCH", 4)
    assert [r.line for r in read_prompt_records(path, tokenizer_dir, limit=5)] == [1, 2, 3, 4, 5]
    assert whole[3].output_from == "generated text (completion)" and whole[3].output_len > whole[0].output_len
    assert whole[1].prompt_from == "chat messages" and whole[2].tokens.tolist() == list(range(2, 7))
