"""The offline experiment kit."""

from __future__ import annotations

import pytest
import torch

from analysis import cnn, digits, mlp, train
from interp import InterpError


def test_builders_are_seeded_and_leave_the_global_rng_alone() -> None:
    for build in (lambda s: mlp(4, [8], 2, seed=s), lambda s: cnn(seed=s)):
        torch.manual_seed(1)
        expected = torch.rand(3)
        torch.manual_seed(1)
        a = build(0)
        assert torch.equal(torch.rand(3), expected)  # the caller's stream continues untouched
        b, c = build(0), build(1)
        pairs = zip(a.parameters(), b.parameters(), c.parameters(), strict=True)
        assert all(torch.equal(x, y) for x, y, _ in pairs)
        assert not all(
            torch.equal(x, z)
            for x, _, z in zip(a.parameters(), b.parameters(), c.parameters(), strict=True)
        )


def test_option_words_are_checked_with_a_suggestion() -> None:
    with pytest.raises(InterpError, match="activation must be one of .*Did you mean 'relu'"):
        mlp(4, [8], 2, activation="rellu")
    with pytest.raises(InterpError, match="optimizer must be one of .*Did you mean 'adam'"):
        train(mlp(64, [8], 10), digits(image=False), optimizer="adm")
