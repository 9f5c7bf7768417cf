"""Tasks: the IOI generator and JSONL tasks."""

from __future__ import annotations

import json
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circuits import TaskError, ioi_task, task_from_jsonl
from circuits._tasks import abba, ioi_data, ioi_split


def one_token(model, word: str) -> bool:
    return len(model.tokenizer(" " + word, add_special_tokens=False).input_ids) == 1


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10**6), order=st.sampled_from(["mixed", "BABA", "ABBA"]))
def test_ioi_prompts(tiny_gpt2, seed: int, order: str) -> None:
    task = ioi_task(tiny_gpt2, 6, seed=seed, templates=order)
    assert task.clean.shape == task.corrupt.shape
    for i, row in enumerate(task.meta["prompts"]):
        names = [row["io"], row["s"], *row["abc"]]
        assert len(set(names)) == 5 and all(one_token(tiny_gpt2, n) for n in names)
        clean = task.clean_text[i]
        words = re.findall(r"[A-Za-z]+", clean)  # whole words: "Sara" is not in "Sarah"
        corrupt = re.findall(r"[A-Za-z]+", task.corrupt_text[i])
        assert words.count(row["s"]) == 2 and words.count(row["io"]) == 1
        assert row["io"] not in corrupt and row["s"] not in corrupt
        assert all(corrupt.count(n) == 1 for n in row["abc"])
        assert (row["order"] == "ABBA") == (words.index(row["io"]) < words.index(row["s"]))
        length = int(task.lengths[i])
        assert torch.equal(task.clean[i, :length], tiny_gpt2.to_tokens(clean)[0])
        assert (
            int(task.answer[i])
            == tiny_gpt2.tokenizer(" " + row["io"], add_special_tokens=False).input_ids[0]
        )


def test_ioi_uses_the_fifteen_templates_and_their_twins() -> None:
    templates = ioi_data()["baba_templates"]
    assert len(templates) == 15
    assert abba(templates[0]) == "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to [A]"


def test_bos_is_explicit(tiny_gpt2) -> None:
    with_bos = ioi_task(tiny_gpt2, 2, template_ids=[0])
    without = ioi_task(tiny_gpt2, 2, template_ids=[0], prepend_bos=False)
    assert with_bos.prepend_bos and not without.prepend_bos
    assert torch.equal(with_bos.lengths, without.lengths + 1)
    assert int(with_bos.clean[0, 0]) == tiny_gpt2.tokenizer.bos_token_id


def test_metric_reads_each_prompts_last_token(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 5, seed=3)
    logits = torch.randn(len(task), task.clean.shape[1], 400)
    expected = torch.stack(
        [
            logits[i, task.lengths[i] - 1, task.answer[i]]
            - logits[i, task.lengths[i] - 1, task.wrong[i]]
            for i in range(len(task))
        ]
    ).mean()
    torch.testing.assert_close(task.logit_diff(logits), expected)
    stacked = torch.cat([logits, 2 * logits])
    torch.testing.assert_close(
        task.logit_diff(stacked, per_copy=True), torch.stack([expected, 2 * expected])
    )


def test_ioi_bad_arguments(tiny_gpt2) -> None:
    with pytest.raises(TaskError, match="n_prompts"):
        ioi_task(tiny_gpt2, 0)
    with pytest.raises(TaskError, match="templates"):
        ioi_task(tiny_gpt2, 2, templates="AABB")
    with pytest.raises(TaskError, match="template_ids"):
        ioi_task(tiny_gpt2, 2, template_ids=[15])


def write(tmp_path, rows) -> str:
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    return str(path)


GOOD = {
    "clean": "When Mary and John went to the store, John gave a drink to",
    "corrupt": "When Lisa and Kevin went to the store, Adam gave a drink to",
    "answer": " Mary",
    "wrong": " John",
}


def test_jsonl_task(tmp_path, tiny_gpt2) -> None:
    task = task_from_jsonl(tiny_gpt2, write(tmp_path, [GOOD, GOOD]))
    assert len(task) == 2 and task.name == "task"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {**GOOD, "corrupt": "When Lisa went to the store, Adam gave a drink to"},
            "line 2: the clean",
        ),
        ({**GOOD, "answer": " Mary Lisa"}, "line 2: the answer ' Mary Lisa' is 2 tokens"),
        ({**GOOD, "wrong": 3}, "line 2: 'wrong' must be a string"),
        ({"clean": "x"}, r"line 2: missing keys \['answer', 'corrupt', 'wrong'\]"),
        (  # a misspelt key is an extra key and a missing one (was a bare KeyError)
            {**{k: v for k, v in GOOD.items() if k != "wrong"}, "wrnog": " John"},
            r"missing keys \['wrong'\] \(it has the unknown keys \['wrnog'\]\)\. Did you mean",
        ),
        ([1, 2], "line 2: each line must be a JSON object"),
        ("{not json", "line 2: not valid JSON"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, tiny_gpt2, bad, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        task_from_jsonl(tiny_gpt2, write(tmp_path, [GOOD, bad]))


def test_jsonl_missing_file(tmp_path, tiny_gpt2) -> None:
    with pytest.raises(TaskError, match="No task file"):
        task_from_jsonl(tiny_gpt2, tmp_path / "none.jsonl")


# -- train / test split ----------------------------------------------------------------------------


def names_in(task) -> set[str]:
    return {name for row in task.meta["prompts"] for name in (row["io"], row["s"], *row["abc"])}


@pytest.mark.parametrize("seed", [0, 7])
def test_train_and_test_share_no_template_and_no_name(tiny_gpt2, seed: int) -> None:
    train = ioi_task(tiny_gpt2, 40, seed=seed, split="train")
    test = ioi_task(tiny_gpt2, 40, seed=seed, split="test")
    train_templates = {row["template"] for row in train.meta["prompts"]}
    test_templates = {row["template"] for row in test.meta["prompts"]}
    assert train_templates.isdisjoint(test_templates)
    assert names_in(train).isdisjoint(names_in(test))
    # and the words of the prompts agree: no test name appears in any train prompt
    train_words = {
        w for text in train.clean_text + train.corrupt_text for w in re.findall(r"\w+", text)
    }
    assert names_in(test).isdisjoint(train_words)
    # each split draws from across its half: several templates, many names
    assert len(train_templates) >= 5 and len(test_templates) >= 5
    assert train.meta["split"] == "train" and test.meta["split"] == "test"
    assert {t % 2 for t in train_templates} == {0} and {t % 2 for t in test_templates} == {1}


def test_the_split_halves_cover_the_data() -> None:
    data = ioi_data()
    train_ids, train_names = ioi_split("train")
    test_ids, test_names = ioi_split("test")
    assert sorted([*train_ids, *test_ids]) == list(range(len(data["baba_templates"])))
    assert sorted(train_names + test_names) == sorted(data["names"])
    assert abs(len(train_names) - len(test_names)) <= 1
    all_ids, all_names = ioi_split(None)
    assert list(all_ids) == list(range(15)) and all_names == data["names"]


def test_no_split_is_unchanged(tiny_gpt2) -> None:
    """split=None draws exactly what ioi_task drew before splits existed: these prompts were
    recorded with the code before the change (tiny-gpt2, 4 prompts)."""
    before = {
        0: [
            "The station Bradley and Crystal went to had a drink. Bradley gave it to",
            "The station Jennifer and Benjamin went to had a drink. Kevin gave it to",
            "Friends Kyle and Patrick found a computer at the restaurant. Patrick gave it to",
            "Friends Richard and Katherine found a computer at the restaurant. Heather gave it to",
        ],
        3: [
            "Then, Dustin and Andrea were thinking about going to the station. Dustin wanted to "
            "give a kiss to",
            "Then, Jeffrey and Brandon were thinking about going to the station. Erica wanted to "
            "give a kiss to",
            "While Christopher and Stephen were commuting to the school, Stephen gave a snack to",
            "While Kevin and Paul were commuting to the school, Elizabeth gave a snack to",
        ],
    }
    for seed, texts in before.items():
        task = ioi_task(tiny_gpt2, 4, seed=seed)
        got = [task.clean_text[0], task.corrupt_text[0], task.clean_text[1], task.corrupt_text[1]]
        assert got == texts
        assert task.meta["split"] is None


def test_split_errors(tiny_gpt2) -> None:
    with pytest.raises(Exception, match="split must be one of"):
        ioi_task(tiny_gpt2, 2, split="validation")
    with pytest.raises(TaskError, match="train split's templates"):
        ioi_task(tiny_gpt2, 2, split="train", template_ids=[1])
    assert ioi_task(tiny_gpt2, 2, split="test", template_ids=[1]).equal_lengths
