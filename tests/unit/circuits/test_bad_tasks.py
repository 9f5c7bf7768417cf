"""Bad task files and prompt pairs: each gives a TaskError that names the file, line and problem
(or a correct task), found with the tokenizer alone, before a model is loaded."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circuits import TaskError, ioi_task, task_from_jsonl, task_from_pairs
from circuits._tasks import read_task_file
from interp._loading import load_tokenizer

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOOD = {
    "clean": "When Mary and John went to the store, John gave a drink to",
    "corrupt": "When Lisa and Kevin went to the store, Adam gave a drink to",
    "answer": " Mary",
    "wrong": " John",
}


def write(path, rows) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tokens():
    return load_tokenizer("tiny-gpt2")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({**GOOD, "wrong": " Mary"}, "line 2: the answer and the wrong answer are the same token"),
        (
            {**GOOD, "corrupt": GOOD["clean"]},
            "line 2: the clean and corrupted prompts are the same",
        ),
        (  # different texts, the same tokens: both unknown words are <unk> to the tiny tokenizer
            {**GOOD, "clean": "When Mary qqq", "corrupt": "When Mary zzz"},
            "line 2: the clean and corrupted prompts are the same tokens",
        ),
        ({**GOOD, "clean": "", "corrupt": ""}, "line 2: the clean prompt is empty"),
        ({**GOOD, "corrupt": "   "}, "line 2: the corrupted prompt is empty"),
        (
            {**GOOD, "clean": " Mary" * 200, "corrupt": " John" * 200},
            "line 2: the clean prompt does not fit: The prompt is 201 tokens.*context is 128",
        ),
        ('{"clean": ' * 50_000 + "1" + "}" * 50_000, "line 2: JSON nested too deeply"),
    ],
)
def test_a_pair_that_cannot_be_measured_is_named(tmp_path, tokens, tiny_gpt2, bad, message) -> None:
    """An answer equal to the wrong token, or empty prompts, ran the whole discovery and then
    failed on a NaN in the graph's meta data; prompts past the context were cut silently. Now
    the tokenizer alone names them, and so does the model."""
    path = write(tmp_path / "task.jsonl", [GOOD, bad])
    for model in (tokens, tiny_gpt2):
        with pytest.raises(TaskError, match=message):
            task_from_jsonl(model, path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d, "is a directory; --task takes a .jsonl file"),
        (
            lambda d: _bytes(d, b'{"clean": "a"}\n\xff\xfe\n'),
            "line 2: not UTF-8 text \\(byte 0xff\\)",
        ),
        (lambda d: _bytes(d, b""), "has no prompt pairs"),
        (lambda d: _bytes(d, b"\n  \n"), "has no prompt pairs"),
        (lambda d: d / "missing.jsonl", "No task file"),
    ],
)
def test_a_task_file_that_cannot_be_read_is_named(tmp_path, make, message: str) -> None:
    """A directory or non-UTF-8 bytes used to end in IsADirectoryError / UnicodeDecodeError."""
    with pytest.raises(TaskError, match=message):
        read_task_file(make(tmp_path))


def _bytes(directory, data: bytes):
    path = directory / "task.jsonl"
    path.write_bytes(data)
    return path


def test_the_tokenizer_alone_builds_the_same_tasks(tmp_path, tokens, tiny_gpt2) -> None:
    path = write(tmp_path / "t.jsonl", [GOOD, GOOD])
    for build in (
        lambda m: task_from_jsonl(m, path),
        lambda m: ioi_task(m, 6, seed=3),
        lambda m: ioi_task(m, 4, split="test", prepend_bos=False),
    ):
        alone, full = build(tokens), build(tiny_gpt2)
        for field in ("clean", "corrupt", "lengths", "answer", "wrong"):
            assert torch.equal(getattr(alone, field), getattr(full, field))


def test_pairs_are_checked_one_by_one(tiny_gpt2) -> None:
    clean = [GOOD["clean"], "When Anna and Paul went to the store, Paul gave a drink to"]
    corrupt = [GOOD["corrupt"], "When Anna and Paul went to the store, Paul gave a drink to"]
    with pytest.raises(TaskError, match="pair 1: the clean and corrupted prompts are the same"):
        task_from_pairs(tiny_gpt2, clean, corrupt, [" Mary", " Anna"], [" John", " Paul"])


# -- property: any JSONL line gives a task or a TaskError that names the line ------------------

LINES = st.one_of(
    st.text(max_size=40),
    st.dictionaries(
        st.sampled_from(["clean", "corrupt", "answer", "wrong", "wrnog", ""]),
        st.one_of(st.text(max_size=12), st.sampled_from([" Mary", " John", GOOD["clean"]])),
        max_size=5,
    ).map(json.dumps),
    st.builds(
        lambda key, value: json.dumps({**GOOD, key: value}),
        st.sampled_from(list(GOOD)),
        st.one_of(st.none(), st.integers(), st.text(max_size=20), st.just(" Mary")),
    ),
)


@FAST
@given(line=LINES)
def test_any_jsonl_line_gives_a_task_or_names_the_line(tmp_path_factory, tokens, line) -> None:
    path = tmp_path_factory.mktemp("t") / "task.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line, encoding="utf-8")
    try:
        task = task_from_jsonl(tokens, path)
    except TaskError as err:
        assert "task.jsonl" in str(err) or "pair" in str(err)
        return
    assert len(task) in (1, 2) and bool((task.answer != task.wrong).all())
