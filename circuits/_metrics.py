"""Task metrics as data: what a task measures at each prompt's last token.

A :class:`Metric` maps the last-position logits of every prompt (of every stacked copy) to one
value per prompt; the task averages them. Discovery, patching, attribution and evaluation all
call :meth:`Task.measure <circuits.Task.measure>`, so they all read the task's metric:

- ``logit_diff`` (default): ``logit(answer) - logit(wrong)``;
- ``prob``: the probability of the answer;
- ``kl``: the KL divergence from the clean run's next-token distribution,
  ``KL(p_clean || p)``, 0 on the clean run itself;
- any callable ``fn(logits, answer, wrong) -> values`` (rows of last-position logits over the
  whole vocabulary, the rows' answer and wrong token ids; one value per row).

Faithfulness normalises by the metric on the full model and the empty circuit, so any of these
works there; for ``kl`` a circuit's faithfulness is ``1 - KL(C) / KL(empty)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from interp import InterpError, TransformerModel

from ._memory import MemoryBudget, prompt_chunks

__all__ = ["METRICS", "AnswerProb", "KLToClean", "LogitDiff", "Metric", "UserMetric"]


class Metric:
    """One value per prompt from its last-position logits (subclasses are frozen dataclasses)."""

    name: str = "metric"

    def tokens(self, answer: Tensor, wrong: Tensor) -> Tensor | None:
        """The sorted token ids whose logits the metric reads; ``None``: the whole vocabulary."""
        return None

    def values(self, logits: Tensor, answer: Tensor, wrong: Tensor, rows: Tensor) -> Tensor:
        """Per-row values. ``logits``: (rows, vocab) over :meth:`tokens` (or everything);
        ``answer``/``wrong``: the rows' token ids as indices into that last axis; ``rows``:
        each row's prompt index in the task."""
        raise NotImplementedError

    def subset(self, index: Tensor) -> Metric:
        """The metric for a subset of the task's prompts (for metrics holding per-prompt data)."""
        return self


@dataclass(frozen=True)
class LogitDiff(Metric):
    """``logit(answer) - logit(wrong)``."""

    name: str = "logit_diff"

    def tokens(self, answer: Tensor, wrong: Tensor) -> Tensor:
        return torch.unique(torch.cat([answer, wrong]))

    def values(self, logits: Tensor, answer: Tensor, wrong: Tensor, rows: Tensor) -> Tensor:
        at = torch.arange(len(logits), device=logits.device)
        return logits[at, answer] - logits[at, wrong]


@dataclass(frozen=True)
class AnswerProb(Metric):
    """The probability of the answer token (softmax over the whole vocabulary)."""

    name: str = "prob"

    def values(self, logits: Tensor, answer: Tensor, wrong: Tensor, rows: Tensor) -> Tensor:
        at = torch.arange(len(logits), device=logits.device)
        return torch.softmax(logits.float(), -1)[at, answer].to(logits.dtype)


@dataclass(frozen=True)
class KLToClean(Metric):
    """``KL(p_clean || p)`` at the last position: how far a run's next-token distribution is
    from the clean run's (build it with :meth:`Task.with_metric("kl", model)
    <circuits.Task.with_metric>`, which runs the clean prompts once)."""

    reference: Tensor = field(repr=False, default_factory=lambda: torch.zeros(0))
    name: str = "kl"

    def values(self, logits: Tensor, answer: Tensor, wrong: Tensor, rows: Tensor) -> Tensor:
        log_p = torch.log_softmax(logits.float(), -1)
        # only the rows' references move (the reference may live on another device)
        ref = self.reference[rows.to(self.reference.device)].to(logits.device)
        return (ref.exp() * (ref - log_p)).sum(-1).to(logits.dtype)

    def subset(self, index: Tensor) -> Metric:
        return KLToClean(self.reference[index.to(self.reference.device)], self.name)


@dataclass(frozen=True)
class UserMetric(Metric):
    """A callable ``fn(logits, answer, wrong) -> values`` over the whole vocabulary."""

    fn: Callable[[Tensor, Tensor, Tensor], Tensor] = field(default=lambda *a: a[0][:, 0])
    name: str = "custom"

    def values(self, logits: Tensor, answer: Tensor, wrong: Tensor, rows: Tensor) -> Tensor:
        out = self.fn(logits, answer, wrong)
        if not isinstance(out, Tensor) or out.shape != (len(logits),):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise InterpError(
                f"The metric {self.name!r} must return one value per row, shape "
                f"({len(logits)},); got {shape}."
            )
        return out


METRICS: dict[str, Callable[..., Metric]] = {
    "logit_diff": lambda model, task, max_memory=None: LogitDiff(),
    "prob": lambda model, task, max_memory=None: AnswerProb(),
    "kl": lambda model, task, max_memory=None: KLToClean(_clean_log_probs(model, task, max_memory)),
}


def _clean_log_probs(model: Any, task: Any, max_memory: int | str | None = None) -> Tensor:
    """Log-probabilities of the clean run's next token at each prompt's last position, shape
    (n, vocab) in float32, on the device of the model's logits.

    The clean prompts run in chunks that fit ``max_memory`` (a no-gradient pass holds every
    position's logits, vocab wide), and only each chunk's last positions are kept, so a large
    task never holds the logits of all its prompts at once.
    """
    if model is None:
        raise InterpError("The 'kl' metric runs the clean prompts once: pass the model too.")
    n, positions = task.clean.shape
    if isinstance(model, TransformerModel):
        size = MemoryBudget(model, max_memory).logit_rows(positions)
    else:  # any callable model: no shapes to size chunks from
        size = n
    parts = []
    with torch.no_grad():
        for chunk in prompt_chunks(n, size):
            # the full logits, as the runs compared with them (see Task.narrowed)
            logits = model(task.clean[chunk])
            at = torch.arange(len(logits), device=logits.device)
            last = logits[at, task.lengths[chunk].to(logits.device) - 1]
            del logits  # the chunk's (rows, pos, vocab) logits go before the next pass
            parts.append(torch.log_softmax(last.float(), -1))
    return torch.cat([p.to(parts[-1].device) for p in parts])
