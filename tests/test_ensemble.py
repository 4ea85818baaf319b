import math

import pytest
import torch

from ltpipe.classifier.base import make_linear
from ltpipe.classifier.bbn import BBNHead
from ltpipe.classifier.ensemble import EnsembleHead, ensemble_heads
from ltpipe.errors import ConfigError
from ltpipe.models.causal import CausalNormHead
from ltpipe.models.heads import load_head, save_head

# On x = [1, 0]: old logits (2, 0), new logits (0, 1).
OLD = make_linear(torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
NEW = make_linear(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
X = torch.tensor([[1.0, 0.0]])


def test_equal_temperatures_average_the_two_softmaxes():
    e = math.e
    p_old = [e ** 2 / (e ** 2 + 1), 1 / (e ** 2 + 1)]
    p_new = [1 / (1 + e), e / (1 + e)]
    hand = torch.tensor([[(a + b) / 2 for a, b in zip(p_old, p_new)]])
    logits = ensemble_heads(OLD, NEW, t_old=1.0, t_new=1.0)(X)
    torch.testing.assert_close(logits.exp(), hand)
    torch.testing.assert_close(logits.softmax(1), hand)  # log p: softmax consumers get p back
    assert logits.argmax(1).item() == 0  # 0.5 (0.881 + 0.269) = 0.575 > 0.425


def test_temperatures_divide_each_heads_logits():
    logits = ensemble_heads(OLD, NEW, t_old=2.0, t_new=0.5)(X)
    hand = (torch.tensor([[2.0, 0.0]]).div(2.0).softmax(1) + torch.tensor([[0.0, 1.0]]).div(0.5).softmax(1)) / 2
    torch.testing.assert_close(logits.exp(), hand)


def test_the_heads_are_copied():
    ensemble = ensemble_heads(OLD, NEW, t_old=1.0, t_new=1.0)
    assert ensemble.old is not OLD and torch.equal(ensemble.old.weight, OLD.weight)


def test_save_load_round_trip_with_any_registered_heads(tmp_path):
    torch.manual_seed(0)
    old = CausalNormHead(4, 3, alpha=1.5)
    old.train()(torch.randn(5, 4))  # a moving average to keep
    new = BBNHead(4, 3)
    ensemble = ensemble_heads(old, new, t_old=1.5, t_new=0.7)
    save_head(tmp_path / "head.safetensors", ensemble)
    again = load_head(tmp_path / "head.safetensors").eval()
    assert isinstance(again, EnsembleHead) and again.kwargs == ensemble.kwargs
    assert torch.equal(again.old.embed, old.embed) and again.old.alpha == 1.5
    x = torch.randn(6, 4)
    assert torch.equal(again(x), ensemble(x))


def test_errors():
    with pytest.raises(ConfigError, match="not a registered classifier head; registered: .*linear"):
        ensemble_heads(torch.nn.Linear(2, 2), NEW, t_old=1.0, t_new=1.0)
    with pytest.raises(ConfigError, match="t_new"):
        ensemble_heads(OLD, NEW, t_old=1.0, t_new=0.0)
