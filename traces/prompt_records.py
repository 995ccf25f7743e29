"""A user's own prompts, one JSON object per line, as token ids with output lengths.

Recognised, per line (the first field found wins; an OpenAI Batch API line, whose request sits
under ``body``, is looked into as well):

- prompt: token ids in ``prompt_token_ids``, ``input_ids``, ``token_ids``, ``prompt_ids`` or
  ``prompt`` (a list of integers); text in ``prompt`` or ``text``; chat ``messages`` (the
  tokenizer's chat template, with the generation prompt). Text and chat need a local Hugging
  Face tokenizer directory (nothing is downloaded).
- output length: a count in ``output_len``, ``output_tokens`` or ``num_output_tokens``; the
  generated token ids in ``output_token_ids`` or ``completion_token_ids``; generated text in
  ``completion``, ``response`` or ``output`` (tokenized); else a limit in ``max_tokens``,
  ``max_completion_tokens`` or ``max_new_tokens`` (the engine ignores EOS, so a limit is taken
  as the length); else the caller's default.
- arrival: ``arrival_s`` (seconds; absent: 0, an offline batch).
- completions: ``n`` (vLLM's and OpenAI's parallel sampling): the line becomes ``n`` requests
  with its prompt, adjacent (``traces/samples.py``); absent: 1.
"""
from __future__ import annotations

import reprlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from scheduler.request import is_finite_number

from .errors import TraceError, json_lines
from .token_chains import TokenError, as_token_array, chains_from_tokens, segment_token_table
from .workload import Workload

TOKEN_FIELDS = ("prompt_token_ids", "input_ids", "token_ids", "prompt_ids", "prompt")
TEXT_FIELDS = ("prompt", "text")
COUNT_FIELDS = ("output_len", "output_tokens", "num_output_tokens")
OUTPUT_TOKEN_FIELDS = ("output_token_ids", "completion_token_ids")
OUTPUT_TEXT_FIELDS = ("completion", "response", "output")
LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_new_tokens")


@dataclass(frozen=True)
class PromptRecord:
    line: int
    tokens: np.ndarray          # uint32 token ids
    output_len: int
    arrival_s: float
    prompt_from: str            # e.g. "token ids (input_ids)", "chat messages"
    output_from: str            # e.g. "count (output_len)", "limit (max_tokens)", "default"
    priority: float | None = None  # `priority` (vLLM's per-request priority; order=priority)
    samples: int = 1               # `n`: completions of this prompt, each a request


class Tokenizer:
    """A local Hugging Face tokenizer, loaded when the first text prompt needs it."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = None if directory is None else Path(directory)
        self._tokenizer = None

    def _loaded(self, path: Path, line: int, what: str):
        if self._tokenizer is not None:
            return self._tokenizer
        if self.directory is None:
            raise TraceError(path, line, f"{what}: give a local Hugging Face tokenizer directory to count its "
                                         "tokens (batchlab import --tokenizer DIR; workload.tokenizer=DIR), "
                                         "or token ids")
        if not self.directory.is_dir():
            raise TraceError(self.directory, None, "no such tokenizer directory")
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise TraceError(path, line, f"{what}: tokenizing text needs transformers "
                                         "(pip install 'transformers>=5,<6')") from None
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.directory), local_files_only=True)
        except (OSError, ValueError) as error:
            raise TraceError(self.directory, None, f"not a loadable tokenizer directory ({error})") from None
        return self._tokenizer

    def text(self, text: str, path: Path, line: int, special_tokens: bool = True) -> "Text":
        """``text`` to tokenize (with the others of its batch); with ``special_tokens``, as a
        prompt (a BOS where the tokenizer adds one), without, as generated text."""
        self._loaded(path, line, "text to tokenize")
        return Text(text, special_tokens)

    def chat(self, messages: list, path: Path, line: int) -> "Text":
        """The chat template rendered with its generation prompt, to tokenize as it stands (the
        template writes its own special tokens), as ``apply_chat_template`` tokenizes it."""
        tokenizer = self._loaded(path, line, "chat messages")
        if not getattr(tokenizer, "chat_template", None):
            raise TraceError(self.directory, None, "this tokenizer has no chat template; give the prompts as text "
                                                   "or token ids")
        try:
            rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as error:  # the template's own errors (jinja, missing keys) name the line
            raise TraceError(path, line, f"chat template failed on these messages ({error})") from None
        return Text(rendered, False)

    def tokenize(self, texts: list["Text"]) -> list[list[int]]:
        """Token ids of every text, in one call per kind (the fast tokenizers encode a batch on
        all cores)."""
        ids: list[list[int] | None] = [None] * len(texts)
        for special in (True, False):
            picked = [i for i, t in enumerate(texts) if t.special_tokens is special]
            if picked:
                encoded = self._tokenizer([texts[i].text for i in picked], add_special_tokens=special)["input_ids"]
                for i, tokens in zip(picked, encoded):
                    ids[i] = list(tokens)
        return ids


@dataclass(frozen=True)
class Text:
    """Text a record's prompt or output is, tokenized with its batch's others."""
    text: str
    special_tokens: bool


def _is_token_list(value) -> bool:
    return isinstance(value, list) and bool(value) and all(type(v) is int for v in value)


def record_scopes(record: dict) -> list[dict]:
    """Where a line's fields are looked for: the line, and an OpenAI Batch API line's ``body``."""
    body = record.get("body")
    return [record, body] if isinstance(body, dict) else [record]


def _first(scopes: list[dict], names: tuple[str, ...], accept) -> tuple[str, object] | None:
    for scope in scopes:
        for name in names:
            if name in scope and accept(scope[name]):
                return name, scope[name]
    return None


def _prompt(scopes, tokenizer: Tokenizer, path: Path, line: int) -> tuple["list[int] | Text", str]:
    found = _first(scopes, TOKEN_FIELDS, _is_token_list)
    if found:
        return found[1], f"token ids ({found[0]})"
    found = _first(scopes, ("messages",), lambda v: isinstance(v, list) and bool(v))
    if found:
        return tokenizer.chat(found[1], path, line), "chat messages"
    found = _first(scopes, TEXT_FIELDS, lambda v: isinstance(v, str) and bool(v))
    if found:
        return tokenizer.text(found[1], path, line), f"text ({found[0]})"
    _bad_token_list(scopes, path, line)
    raise TraceError(path, line, "no prompt: expected token ids (" + ", ".join(TOKEN_FIELDS[:-1]) +
                     "), text (prompt, text) or chat messages, at the top level or under 'body'")


def _bad_token_list(scopes, path: Path, line: int) -> None:
    """A token field that is there but is no list of token ids (``prompt`` may be text) names
    itself and its first wrong item, rather than reading as no prompt at all."""
    for scope in scopes:
        for name in TOKEN_FIELDS:
            if name in scope and not (name in TEXT_FIELDS and isinstance(scope[name], str)):
                raise TraceError(path, line, _not_token_ids(name, scope[name]))


def _not_token_ids(name: str, value) -> str:
    """What is wrong with ``value``, a field ``name`` meant as a list of token ids."""
    if not isinstance(value, list):
        wrong = f"is {type(value).__name__} {reprlib.repr(value)}"
    elif not value:
        wrong = "is empty"
    else:
        i = next(i for i, v in enumerate(value) if type(v) is not int)
        wrong = f"has item {i} {reprlib.repr(value[i])}"
    return f"{name} {wrong}; expected a non-empty list of integer token ids"


def _output_len(scopes, tokenizer: Tokenizer, default: int | None, path: Path, line: int) -> tuple["int | Text", str]:
    positive = lambda v: type(v) is int and v > 0
    for names, kind, accept, length in (
            (COUNT_FIELDS, "count", positive, lambda v: v),
            (OUTPUT_TOKEN_FIELDS, "generated tokens", _is_token_list, len),
            (OUTPUT_TEXT_FIELDS, "generated text", lambda v: isinstance(v, str) and bool(v),
             lambda v: tokenizer.text(v, path, line, special_tokens=False)),
            (LIMIT_FIELDS, "limit", positive, lambda v: v)):
        found = _first(scopes, names, accept)
        if found:
            value = length(found[1])  # a Text is counted once its batch is tokenized
            return (value if isinstance(value, Text) else max(1, value)), f"{kind} ({found[0]})"
    bad = _first(scopes, OUTPUT_TOKEN_FIELDS, lambda v: True)  # not read as a default
    if bad:
        raise TraceError(path, line, _not_token_ids(*bad))
    bad = _first(scopes, COUNT_FIELDS + LIMIT_FIELDS, lambda v: True)
    if bad:
        raise TraceError(path, line, f"{bad[0]} is {bad[1]!r}; expected an integer >= 1")
    if default is None:
        raise TraceError(path, line, "no output length: expected one of " + ", ".join(
            COUNT_FIELDS + OUTPUT_TOKEN_FIELDS + OUTPUT_TEXT_FIELDS + LIMIT_FIELDS) + "; or give a default (batchlab import --output-len N; workload.output_len=N)")
    return default, "default"


BATCH = 256  # records read before their texts are tokenized together


def _token_array(tokens, path: Path, line: int) -> np.ndarray:
    try:
        return as_token_array(tokens, 0)
    except TokenError as error:
        raise TraceError(path, line, str(error).split(": ", 1)[1]) from None


def read_prompt_records(path: str | Path, tokenizer_dir: str | Path | None = None, output_len: int | None = None,
                        limit: int | None = None, progress: Callable[[str], None] | None = None,
                        progress_every_s: float = 2.0) -> Iterator[PromptRecord]:
    """The prompts of a JSON-lines file, in file order; errors name the file and line. Texts
    are tokenized ``BATCH`` records at a time."""
    path = Path(path)
    tokenizer = Tokenizer(tokenizer_dir)
    last_report = time.perf_counter()
    count = 0
    pending: list[tuple] = []  # (line, prompt, prompt_from, output length, output_from, arrival, priority, n)

    def flush() -> Iterator[PromptRecord]:
        nonlocal count, last_report
        texts = [v for entry in pending for v in (entry[1], entry[3]) if isinstance(v, Text)]
        ids = iter(tokenizer.tokenize(texts) if texts else [])
        for line, prompt, prompt_from, length, output_from, arrival, priority, samples in pending:
            array = _token_array(next(ids), path, line) if isinstance(prompt, Text) else prompt
            if isinstance(length, Text):
                length = max(1, len(next(ids)))
            yield PromptRecord(line, array, length, arrival, prompt_from, output_from, priority, samples)
            count += 1
            if progress is not None and time.perf_counter() - last_report >= progress_every_s:
                last_report = time.perf_counter()
                progress(f"read {count:,} prompts ({path.name}, line {line:,})")
        pending.clear()

    for line, record in json_lines(path):
        if limit is not None and count + len(pending) >= limit:
            break
        scopes = record_scopes(record)
        prompt, prompt_from = _prompt(scopes, tokenizer, path, line)
        if not isinstance(prompt, Text):  # token ids: checked now, so the first bad line is named first
            prompt = _token_array(prompt, path, line)
        length, output_from = _output_len(scopes, tokenizer, output_len, path, line)
        arrival = record.get("arrival_s", 0.0)
        if isinstance(arrival, bool) or not isinstance(arrival, (int, float)) or not arrival >= 0:
            raise TraceError(path, line, f"arrival_s is {arrival!r}; expected seconds >= 0")
        priority = next((scope["priority"] for scope in scopes if "priority" in scope), None)
        if priority is not None and not is_finite_number(priority):
            raise TraceError(path, line, f"priority is {priority!r}; expected a finite number (lower runs first "
                                         f"under schedule priority)")
        pending.append((line, prompt, prompt_from, length, output_from, float(arrival), priority,
                        line_samples(scopes, path, line)))
        if len(pending) >= BATCH:
            yield from flush()
    yield from flush()


def line_samples(scopes, path: Path, line: int | None) -> int:
    """A line's ``n`` (completions of its prompt; 1 where absent)."""
    n = next((scope["n"] for scope in scopes if "n" in scope), 1)
    if type(n) is not int or n < 1:
        raise TraceError(path, line, f"n is {n!r}; expected the number of completions of this prompt, an integer >= 1")
    return n


def load_prompts(path: str | Path, tokenizer_dir: str | Path | None = None, output_len: int | None = None,
                 limit: int | None = None, progress: Callable[[str], None] | None = None
                 ) -> tuple[Workload, list[PromptRecord]]:
    """The prompts of ``path`` as a workload (request ids in file order, prompts the paths of
    their radix tree; a line with ``n`` completions ``n`` adjacent requests), and the records read."""
    from scheduler import Request

    records = list(read_prompt_records(path, tokenizer_dir, output_len, limit, progress))
    if not records:
        raise TraceError(path, None, "no prompts")
    chains = chains_from_tokens([r.tokens for r in records])
    requests = tuple(Request(index, r.arrival_s, chain, r.output_len, priority=r.priority)
                     for index, (r, chain) in enumerate(zip(records, chains)))
    if any(r.samples > 1 for r in records):
        from .samples import expand
        requests = expand(requests, [r.samples for r in records])
    tokens = segment_token_table(chains, [r.tokens for r in records])
    return Workload(f"prompts:{Path(path).stem}", requests, str(path), segment_tokens=tokens), records
