"""Tasks: clean/corrupted prompt pairs with answer tokens, and their metric.

Built in: indirect-object identification (IOI) after Wang et al. 2022, with their 15 BABA
templates and ABBA twins, the names/places/objects shipped in ``data/ioi.json`` and the ABC
corruption (the three name slots filled with three unrelated names). Any other task comes from
a JSONL file of ``{"clean", "corrupt", "answer", "wrong"}`` lines.

Prompts are tokenised one by one (BOS first when ``prepend_bos``, which is the default) and
right-padded, so every prompt keeps its own positions; the metric reads each prompt's logits
at its last real token.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from interp import (
    HookedModel,
    InterpError,
    ShapeError,
    TransformerModel,
    data_path,
    did_you_mean,
)

from ._metrics import METRICS, LogitDiff, Metric, UserMetric
from ._options import Split, check_option

__all__ = [
    "Task",
    "TaskError",
    "ioi_split",
    "ioi_task",
    "read_task_file",
    "task_from_jsonl",
    "task_from_pairs",
]


class TaskError(InterpError, ValueError):
    """A task that cannot be built from the given prompts."""


@dataclass(frozen=True)
class Task:
    """Clean and corrupted prompts, answer tokens, and the metric (logit difference unless
    :meth:`with_metric` says otherwise).

    Attributes
    ----------
    clean, corrupt : Tensor of shape (n, pos)
        Token ids, right-padded; pair i has the same length in both.
    lengths : Tensor of shape (n,)
        Tokens of each prompt (BOS included).
    answer, wrong : Tensor of shape (n,)
        The token that should win, and the one it is compared with.
    """

    name: str
    clean: Tensor
    corrupt: Tensor
    lengths: Tensor
    answer: Tensor
    wrong: Tensor
    prepend_bos: bool = True
    clean_text: tuple[str, ...] = ()
    corrupt_text: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    metric: Metric = field(default_factory=LogitDiff)

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def equal_lengths(self) -> bool:
        return bool((self.lengths == self.lengths[0]).all())

    def last_positions(self, copies: int = 1) -> Tensor:
        """Index of each prompt's last token, repeated for ``copies`` stacked copies."""
        return (self.lengths - 1).repeat(copies)

    @property
    def metric_name(self) -> str:
        return self.metric.name

    @property
    def metric_tokens(self) -> Tensor | None:
        """The token ids the metric reads (sorted), so logits of other tokens need not be
        computed; ``None`` when it reads the whole vocabulary."""
        return self.metric.tokens(self.answer, self.wrong)

    def with_metric(
        self,
        metric: str | Metric | Callable[..., Tensor],
        model: Any = None,
        max_memory: int | str | None = None,
    ) -> Task:
        """The task measuring something else: ``"logit_diff"``, ``"prob"``, ``"kl"`` (needs
        ``model``: it runs the clean prompts once, in chunks that fit ``max_memory``), a
        :class:`~circuits.Metric`, or a callable ``fn(logits, answer, wrong) -> values`` over
        last-position logits.

        Examples
        --------
        >>> model = load_model("tiny-gpt2")
        >>> task = ioi_task(model, 2).with_metric("kl", model)
        >>> float(task.measure(model(task.clean)))  # the clean run is at distance 0
        0.0
        """
        if isinstance(metric, str):
            name = check_option("metric", metric, tuple(METRICS))
            metric = METRICS[name](model, self, max_memory)
        elif not isinstance(metric, Metric):
            if not callable(metric):
                raise TaskError(
                    f"metric must be one of {', '.join(METRICS)}, a Metric or a callable; got "
                    f"{type(metric).__name__}."
                )
            metric = UserMetric(metric, getattr(metric, "__name__", "custom"))
        return replace(self, metric=metric)

    def measure(
        self, logits: Tensor, *, per_copy: bool = False, vocab: Tensor | None = None
    ) -> Tensor:
        """The task's metric: its mean over prompts of the value at each prompt's last token.

        Parameters
        ----------
        logits : Tensor of shape (copies * n, pos, vocab) or (copies * n, vocab)
            Full logits, or logits already taken at the last positions.
        per_copy : bool
            Return one mean per stacked copy (shape ``(copies,)``) instead of a scalar.
        vocab : Tensor, optional
            The token ids the last axis of ``logits`` holds, when it holds only
            :attr:`metric_tokens` (or a sorted superset of them) instead of the whole vocabulary.
        """
        return self._measure(self.metric, logits, per_copy, vocab)

    @contextlib.contextmanager
    def narrowed(self, model: HookedModel, copies: int = 1) -> Iterator[Tensor | None]:
        """While open, ``model``'s forward passes of ``copies`` stacked copies of the prompts
        compute only the logits the metric reads, when it names them: each prompt's last
        position and :attr:`metric_tokens` (see :meth:`HookedModel.narrow_logits
        <interp.HookedModel.narrow_logits>`). Yields the ``vocab`` to give :meth:`measure`.

        Examples
        --------
        >>> model = load_model("tiny-gpt2")
        >>> task = ioi_task(model, 4)
        >>> with task.narrowed(model) as vocab:
        ...     value = task.measure(model(task.clean), vocab=vocab)
        >>> torch.allclose(value, task.measure(model(task.clean)), atol=1e-5)
        True
        """
        vocab = self.metric_tokens
        if vocab is None:
            # a metric over the whole vocabulary (kl, prob) gets the full logits: with several
            # threads, MKL splits a product of few rows over the vocabulary differently from
            # one of many, so its value would change in the last bits with the chunking, which
            # the learned masks' optimiser turns into different steps
            yield None
            return
        with model.narrow_logits(self.last_positions(copies), vocab) as narrowed:
            yield vocab if narrowed else None

    def logit_diff(
        self, logits: Tensor, *, per_copy: bool = False, vocab: Tensor | None = None
    ) -> Tensor:
        """Mean of ``logit(answer) - logit(wrong)`` at each prompt's last token, whatever the
        task's metric (see :meth:`measure` for the arguments)."""
        return self._measure(LogitDiff(), logits, per_copy, vocab)

    def _measure(
        self, metric: Metric, logits: Tensor, per_copy: bool, vocab: Tensor | None
    ) -> Tensor:
        n = len(self)
        copies = logits.shape[0] // n
        if logits.shape[0] != copies * n:
            raise TaskError(
                f"Expected logits for copies of {n} prompts; got {logits.shape[0]} rows."
            )
        rows = torch.arange(copies * n, device=logits.device)
        if logits.ndim == 3:
            logits = logits[rows, self.last_positions(copies).to(logits.device)]
        answer, wrong = self.answer, self.wrong
        if vocab is not None:
            if metric.tokens(answer, wrong) is None:
                raise TaskError(
                    f"The metric {metric.name!r} reads every logit; got a vocab subset."
                )
            at = torch.searchsorted(vocab, torch.cat([answer, wrong])).clamp(max=len(vocab) - 1)
            if not torch.equal(vocab[at], torch.cat([answer, wrong])):
                raise TaskError("measure(vocab=...) must hold every answer and wrong token.")
            answer, wrong = at[:n], at[n:]
        answer = answer.repeat(copies).to(logits.device)
        wrong = wrong.repeat(copies).to(logits.device)
        prompts = torch.arange(n).repeat(copies)
        values = metric.values(logits, answer, wrong, prompts)
        means = values.view(copies, n).mean(1)
        return means if per_copy else means.mean()

    def to(self, device: str | torch.device) -> Task:
        """The task with its token tensors on ``device`` (that of the model it is run on)."""
        return replace(
            self,
            **{
                f: getattr(self, f).to(device)
                for f in ("clean", "corrupt", "lengths", "answer", "wrong")
            },
        )

    def subset(self, index: Sequence[int] | slice) -> Task:
        """The task restricted to some prompts."""
        idx = torch.arange(len(self), device=self.clean.device)[index]
        keep = idx.tolist()
        return replace(
            self,
            clean=self.clean[idx],
            corrupt=self.corrupt[idx],
            lengths=self.lengths[idx.to(self.lengths.device)],
            answer=self.answer[idx.to(self.answer.device)],
            wrong=self.wrong[idx.to(self.wrong.device)],
            # a task built from token ids has no texts
            clean_text=tuple(self.clean_text[i] for i in keep) if self.clean_text else (),
            corrupt_text=tuple(self.corrupt_text[i] for i in keep) if self.corrupt_text else (),
            meta=dict(self.meta),
            metric=self.metric.subset(idx.cpu()),
        )


# -- building tasks ------------------------------------------------------------------------------


def _single_token(model: TransformerModel, text: str) -> int | None:
    ids = model.tokenizer(text, add_special_tokens=False).input_ids
    return ids[0] if len(ids) == 1 else None


def _check_texts(where: str, clean: str, corrupt: str, answer: str, wrong: str) -> None:
    """What is wrong with a pair on its face, before any tokenizer: an empty prompt, the same
    prompt twice, the same answer twice (the token checks of :func:`task_from_pairs` catch the
    rest, e.g. two texts that tokenize alike)."""
    for label, text in (("clean", clean), ("corrupted", corrupt)):
        if not text.strip():
            raise TaskError(f"{where}: the {label} prompt is empty; it must have some text.")
    if clean == corrupt:
        raise TaskError(_SAME_PROMPTS.format(where=where, clean=clean))
    if answer == wrong:
        raise TaskError(_SAME_ANSWERS.format(where=where, answer=answer))


_SAME_PROMPTS = (
    "{where}: the clean and corrupted prompts are the same tokens ({clean!r}), so the corrupted "
    "run cannot differ from the clean one; the corruption must change the prompt."
)
_SAME_ANSWERS = (
    "{where}: the answer and the wrong answer are the same token ({answer!r}), so their logit "
    "difference is 0 on every run and there is nothing to explain; the wrong answer must be "
    "another token."
)


def _tokenize(
    model: TransformerModel,
    texts: Sequence[str],
    prepend_bos: bool,
    where: Sequence[str],
    label: str,
) -> list[Tensor]:
    out = []
    for text, place in zip(texts, where, strict=True):
        if not isinstance(text, str) or not text.strip():
            raise TaskError(f"{place}: the {label} prompt is empty; it must have some text.")
        try:
            out.append(model.to_tokens(text, prepend_bos=prepend_bos)[0].cpu())
        except ShapeError as err:  # longer than the model's context
            raise TaskError(f"{place}: the {label} prompt does not fit: {err}") from None
    return out


def task_from_pairs(
    model: TransformerModel,
    clean: Sequence[str],
    corrupt: Sequence[str],
    answers: Sequence[str],
    wrongs: Sequence[str],
    *,
    name: str = "task",
    prepend_bos: bool = True,
    where: Sequence[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> Task:
    """Build a task from prompt pairs and answer strings (each answer must be one token).

    ``where`` names each pair in error messages (e.g. ``"line 3"``). ``model`` may be a
    :class:`interp.ModelTokenizer` (``interp.load_tokenizer``): every check below then runs
    before the model is loaded.

    Raises
    ------
    TaskError
        For a pair that cannot be measured: an empty prompt, a prompt longer than the model's
        context, clean and corrupted prompts of different lengths or the very same tokens
        (nothing to patch), an answer or wrong answer that is not one token, or an answer equal
        to the wrong answer (their logit difference is 0 on every run).
    """
    n = len(clean)
    if not n or not (len(corrupt) == len(answers) == len(wrongs) == n):
        raise TaskError(
            f"A task needs as many corrupted prompts, answers and wrong answers as clean prompts "
            f"(got {n}, {len(corrupt)}, {len(answers)}, {len(wrongs)}), and at least one."
        )
    where = list(where) if where is not None else [f"pair {i}" for i in range(n)]
    clean_tok = _tokenize(model, clean, prepend_bos, where, "clean")
    corrupt_tok = _tokenize(model, corrupt, prepend_bos, where, "corrupted")
    answer_ids, wrong_ids = [], []
    for i in range(n):
        if len(clean_tok[i]) != len(corrupt_tok[i]):
            raise TaskError(
                f"{where[i]}: the clean prompt is {len(clean_tok[i])} tokens and the corrupted one "
                f"{len(corrupt_tok[i])}; patching needs equal lengths. Clean: {clean[i]!r}; "
                f"corrupted: {corrupt[i]!r}."
            )
        if torch.equal(clean_tok[i], corrupt_tok[i]):
            raise TaskError(_SAME_PROMPTS.format(where=where[i], clean=clean[i]))
        for label, text, out in (
            ("answer", answers[i], answer_ids),
            ("wrong", wrongs[i], wrong_ids),
        ):
            token = _single_token(model, text)
            if token is None:
                pieces = model.tokenizer.tokenize(text)
                raise TaskError(
                    f"{where[i]}: the {label} {text!r} is {len(pieces)} tokens for this model "
                    f"({pieces}); it must be one (names usually need a leading space)."
                )
            out.append(token)
        if answer_ids[i] == wrong_ids[i]:
            raise TaskError(_SAME_ANSWERS.format(where=where[i], answer=answers[i]))
    pad = model.tokenizer.pad_token_id
    pad = 0 if pad is None else int(pad)
    return Task(
        name=name,
        clean=pad_sequence(clean_tok, batch_first=True, padding_value=pad),
        corrupt=pad_sequence(corrupt_tok, batch_first=True, padding_value=pad),
        lengths=torch.tensor([len(t) for t in clean_tok]),
        answer=torch.tensor(answer_ids),
        wrong=torch.tensor(wrong_ids),
        prepend_bos=prepend_bos,
        clean_text=tuple(clean),
        corrupt_text=tuple(corrupt),
        meta=dict(meta or {}),
    )


def task_from_jsonl(model: TransformerModel, path: str | Path, *, prepend_bos: bool = True) -> Task:
    """Load a task from a JSONL file of ``{"clean", "corrupt", "answer", "wrong"}`` objects.

    The file is checked line by line (:func:`read_task_file`), then every pair as
    :func:`task_from_pairs` checks it; errors name the file and the line.
    """
    path = Path(path)
    rows, where = read_task_file(path)
    return task_from_pairs(
        model,
        rows["clean"],
        rows["corrupt"],
        rows["answer"],
        rows["wrong"],
        name=path.stem,
        prepend_bos=prepend_bos,
        where=where,
        meta={"source": str(path)},
    )


TASK_KEYS = ("clean", "corrupt", "answer", "wrong")


def read_task_file(path: str | Path) -> tuple[dict[str, list[str]], list[str]]:
    """The rows of a JSONL task file, as lists of strings by key, and where each row is
    (``"name.jsonl line 3"``). Needs no model: the command line reads the file before it loads one.

    Raises
    ------
    TaskError
        For a missing file, a directory, bytes that are not UTF-8, a line that is not a JSON
        object of four strings (a misspelt key is named), or a file without a row.
    """
    path = Path(path)
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except (OSError, ValueError):  # a name no file can have
        is_dir, exists = False, False
    if is_dir:
        raise TaskError(f"{str(path)!r} is a directory; --task takes a .jsonl file.")
    if not exists:
        raise TaskError(f"No task file at {str(path)!r}.")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise TaskError(f"Cannot read the task file {str(path)!r}: {err.strerror}.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise TaskError(
            f"{path.name} line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); save the "
            "task file as UTF-8."
        ) from None
    rows: dict[str, list[str]] = {key: [] for key in TASK_KEYS}
    where = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskError(f"{path.name} line {number}: not valid JSON ({err.msg}).") from None
        except RecursionError:
            raise TaskError(f"{path.name} line {number}: JSON nested too deeply.") from None
        if not isinstance(item, dict):
            raise TaskError(
                f"{path.name} line {number}: each line must be a JSON object with the keys "
                f"{sorted(rows)}; got {type(item).__name__}."
            )
        missing = sorted(set(rows) - set(item))
        if missing:
            unknown = sorted(set(item) - set(rows))
            hint = "".join(did_you_mean(key, unknown) for key in missing)
            raise TaskError(
                f"{path.name} line {number}: missing keys {missing}"
                + (f" (it has the unknown keys {unknown}).{hint}" if unknown else ".")
            )
        for key in rows:
            if not isinstance(item[key], str):
                raise TaskError(f"{path.name} line {number}: {key!r} must be a string.")
        _check_texts(f"{path.name} line {number}", *(item[key] for key in TASK_KEYS))
        for key in rows:
            rows[key].append(item[key])
        where.append(f"{path.name} line {number}")
    if not where:
        raise TaskError(f"{path.name} has no prompt pairs.")
    return rows, where


# -- IOI -----------------------------------------------------------------------------------------


def ioi_data() -> dict[str, Any]:
    """Names, places, objects and BABA templates shipped in ``data/ioi.json``."""
    return json.loads(data_path("ioi.json").read_text())


def abba(template: str) -> str:
    """The ABBA twin of a BABA template: the names of the first clause swapped."""
    first_b, first_a = template.index("[B]"), template.index("[A]")
    out = list(template)
    out[first_b + 1], out[first_a + 1] = "A", "B"
    return "".join(out)


def _fill(template: str, names: Sequence[str], place: str, obj: str) -> str:
    """Fill the name slots in order of appearance with ``names``."""
    text = template.replace("[PLACE]", place).replace("[OBJECT]", obj)
    slots = iter(names)
    return re.sub(r"\[[AB]\]", lambda m: next(slots), text)


def ioi_task(
    model: TransformerModel,
    n_prompts: int = 16,
    *,
    seed: int = 0,
    templates: str = "mixed",
    template_ids: Sequence[int] | None = None,
    prepend_bos: bool = True,
    split: Split | None = None,
) -> Task:
    """Indirect-object identification prompts with the ABC corruption.

    Parameters
    ----------
    model : TransformerModel
        Names are kept only if they are one token (with a leading space) for its tokenizer.
    n_prompts : int
    seed : int
    templates : {"mixed", "BABA", "ABBA"}
        Which name order; "mixed" alternates.
    template_ids : sequence of int, optional
        Use only these of the 15 templates (e.g. ``[0]`` for equal-length prompts); with a
        ``split``, only templates of that split.
    prepend_bos : bool
    split : {"train", "test"}, optional
        Draw from one half of the data, so that circuits found on ``train`` can be evaluated
        on ``test`` prompts that share no template and no name with them: ``train`` has the
        even-numbered templates and names (by their place in ``data/ioi.json``), ``test`` the
        odd-numbered ones (:func:`ioi_split`). Places and objects are shared. ``None`` (the
        default) uses everything.

    Returns
    -------
    Task
        Clean prompt "... [S] gave a drink to" with answer " [IO]" and wrong " [S]"; the
        corrupted prompt has the IO and both S slots filled with three other names.

    Examples
    --------
    >>> model = load_model("tiny-gpt2")
    >>> task = ioi_task(model, 4, template_ids=[0])
    >>> task.clean_text[0]  # doctest: +SKIP
    'Then, Jessica and Kelly went to the school. Jessica gave a ring to'
    >>> train, test = ioi_task(model, 8, split="train"), ioi_task(model, 8, split="test")
    >>> {p["template"] % 2 for p in train.meta["prompts"]}, train.meta["split"]
    ({0}, 'train')
    """
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise TaskError(f"n_prompts must be an int >= 1; got {n_prompts!r}.")
    if templates not in ("mixed", "BABA", "ABBA"):
        raise TaskError(f"templates must be 'mixed', 'BABA' or 'ABBA'; got {templates!r}.")
    data = ioi_data()
    baba = data["baba_templates"]
    allowed, names = ioi_split(split, data)
    ids = list(allowed) if template_ids is None else list(template_ids)
    if not ids or any(i not in allowed for i in ids):
        which = f"the {split} split's templates" if split else "the templates"
        raise TaskError(
            f"template_ids must be among {which} {list(allowed)}; got {template_ids!r}."
        )
    names = [n for n in names if _single_token(model, " " + n) is not None]
    if len(names) < 5:
        raise TaskError(
            f"Only {len(names)} of the IOI names{f' of the {split} split' if split else ''} "
            "are one token for this tokenizer; need 5."
        )
    rng = random.Random(seed)
    clean, corrupt, answers, wrongs, meta_rows = [], [], [], [], []
    for i in range(n_prompts):
        order = templates if templates != "mixed" else ("BABA", "ABBA")[i % 2]
        tid = rng.choice(ids)
        template = baba[tid] if order == "BABA" else abba(baba[tid])
        io, s, c1, c2, c3 = rng.sample(names, 5)
        place, obj = rng.choice(data["places"]), rng.choice(data["objects"])
        slot_names = {"A": io, "B": s}
        order_of_slots = re.findall(r"\[([AB])\]", template)
        text = _fill(template, [slot_names[x] for x in order_of_slots], place, obj)
        prompt = text[: text.rindex(" " + io)]  # the final IO is what the model must say
        # ABC: the IO slot and both S slots get three names unrelated to the clean ones
        abc = {"A": c1}
        fills, s_seen = [], 0
        for slot in order_of_slots[:-1]:
            if slot == "A":
                fills.append(abc["A"])
            else:
                fills.append((c2, c3)[min(s_seen, 1)])
                s_seen += 1
        corrupt_text = _fill(template.rsplit(" [A]", 1)[0], fills, place, obj)
        clean.append(prompt)
        corrupt.append(corrupt_text)
        answers.append(" " + io)
        wrongs.append(" " + s)
        meta_rows.append({"template": tid, "order": order, "io": io, "s": s, "abc": [c1, c2, c3]})
    return task_from_pairs(
        model,
        clean,
        corrupt,
        answers,
        wrongs,
        name="ioi",
        prepend_bos=prepend_bos,
        meta={
            "seed": seed,
            "templates": templates,
            "split": split,
            "prompts": meta_rows,
            "n_names": len(names),
        },
    )


def ioi_split(split: Split | None, data: dict[str, Any] | None = None) -> tuple[range, list[str]]:
    """The template ids and the names of one split of the IOI data (all of them for ``None``).

    Templates and names alternate between the splits by their place in ``data/ioi.json``
    (``train``: even places, ``test``: odd places), so the two splits share none, and each
    keeps templates from across the list.

    Examples
    --------
    >>> train_ids, train_names = ioi_split("train")
    >>> test_ids, test_names = ioi_split("test")
    >>> list(train_ids)[:3], set(train_ids) & set(test_ids), set(train_names) & set(test_names)
    ([0, 2, 4], set(), set())
    """
    if split is not None:
        check_option("split", split, Split)
    data = ioi_data() if data is None else data
    n = len(data["baba_templates"])
    start, step = {None: (0, 1), "train": (0, 2), "test": (1, 2)}[split]
    return range(start, n, step), list(data["names"][start::step])
