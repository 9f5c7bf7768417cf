"""Shared fixtures: tiny random models (fast, for unit tests) and the embedded real model."""

from __future__ import annotations

import pytest
import torch

import interp

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="session")
def tiny_gpt2() -> interp.TransformerModel:
    return interp.load_model("tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_llama() -> interp.TransformerModel:
    return interp.load_model("tiny-llama")


@pytest.fixture(params=["tiny-gpt2", "tiny-llama"], scope="session")
def tiny(request: pytest.FixtureRequest) -> interp.TransformerModel:
    return request.getfixturevalue(request.param.replace("-", "_"))


@pytest.fixture(scope="session")
def smollm2() -> interp.TransformerModel:
    return interp.load_model("smollm2-135m")


@pytest.fixture
def mlp() -> interp.ModuleModel:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 8),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 3),
    )
    return interp.ModuleModel(net)
