import pytest
import torch

from ltpipe.errors import ConfigError
from ltpipe.models.causal import CausalNormHead
from ltpipe.models.heads import load_head, save_head


def reference_forward(x, weight, embed, *, training, num_head, tau, gamma, alpha):
    """Causal_Norm_Classifier.forward of KaihuaTang/Long-Tailed-Recognition.pytorch, written out step by step."""
    head_dim = x.shape[1] // num_head
    scale = tau / num_head

    def l2_norm(t):
        return t / torch.norm(t, 2, 1, keepdim=True)

    def causal_norm(t, weight):
        return t / (torch.norm(t, 2, 1, keepdim=True) + weight)

    def multi_head_call(func, t, *args):
        return torch.cat([func(item, *args) for item in torch.split(t, head_dim, dim=1)], dim=1)

    normed_w = multi_head_call(causal_norm, weight, gamma)
    normed_x = multi_head_call(l2_norm, x)
    y = torch.mm(normed_x * scale, normed_w.t())
    if not training:
        normed_c = multi_head_call(l2_norm, embed.view(1, -1))
        output = []
        for nx, nc, nw in zip(torch.split(normed_x, head_dim, 1), torch.split(normed_c, head_dim, 1),
                              torch.split(normed_w, head_dim, 1)):
            cos_val = (nx * nc).sum(-1, keepdim=True) / torch.norm(nx, 2, 1, keepdim=True) \
                / torch.norm(nc, 2, 1, keepdim=True)
            output.append(torch.mm((nx - cos_val * alpha * nc) * scale, nw.t()))
        y = sum(output)
    return y


def head(**kwargs):
    torch.manual_seed(0)
    return CausalNormHead(6, 4, **kwargs)


def test_training_and_tde_logits_match_the_reference():
    h = head(num_heads=3, tau=16.0, gamma=0.03125, alpha=1.5)
    x = torch.randn(5, 6)
    h.embed.copy_(torch.randn(6))
    kw = dict(num_head=3, tau=16.0, gamma=0.03125, alpha=1.5)
    # Same operations in the same order: bit-identical, not merely close.
    assert torch.equal(h.logits(x), reference_forward(x, h.weight, h.embed, training=True, **kw))
    assert torch.equal(h.eval()(x), reference_forward(x, h.weight, h.embed, training=False, **kw))
    assert torch.equal(h.tde_logits(x, 3.0),
                       reference_forward(x, h.weight, h.embed, training=False, **dict(kw, alpha=3.0)))


def test_tde_with_alpha_zero_is_the_plain_logits():
    h = head()
    h.embed.copy_(torch.randn(6))
    x = torch.randn(5, 6)
    torch.testing.assert_close(h.tde_logits(x, 0.0), h.logits(x))
    assert not torch.allclose(h.tde_logits(x, 1.0), h.logits(x))


def test_moving_average_updates_in_training_only():
    h = head(momentum=0.9)
    x1, x2 = torch.randn(3, 6), torch.randn(3, 6)
    h.train()
    h(x1)
    h(x2)
    torch.testing.assert_close(h.embed, 0.9 * x1.mean(0) + x2.mean(0))
    expected = h.embed.clone()
    h.eval()
    h(torch.randn(3, 6))
    assert torch.equal(h.embed, expected)


def test_untrained_average_gives_plain_logits_not_nan():
    h = head().eval()
    x = torch.randn(2, 6)
    torch.testing.assert_close(h(x), h.logits(x))


def test_save_load_round_trip_keeps_average_and_inference_alpha(tmp_path):
    h = head(alpha=1.0)
    h.train()(torch.randn(4, 6))
    h.alpha = 3.0  # chosen at inference, after training
    save_head(tmp_path / "head.safetensors", h)
    again = load_head(tmp_path / "head.safetensors")
    assert isinstance(again, CausalNormHead) and again.alpha == 3.0 and again.kwargs == h.kwargs
    assert torch.equal(again.embed, h.embed) and torch.equal(again.weight, h.weight)
    x = torch.randn(3, 6)
    assert torch.equal(again.eval()(x), h.eval()(x))


def test_heads_must_divide_the_features():
    with pytest.raises(ConfigError, match="num_heads=4 must divide the feature dimension 6; valid choices: 1, 2, 3, 6"):
        CausalNormHead(6, 4, num_heads=4)
