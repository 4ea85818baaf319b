import numpy as np
import pytest
import torch

from ltpipe.errors import ConfigError
from ltpipe.mixing import MIXERS, build_mixer, remix_label_weight

B, CH, H, W = 32, 3, 16, 12
# One class per sample, so y_b = y[perm] reveals each sample's partner.
COUNTS = [int(c) for c in np.geomspace(400, 1, B).round()]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def batch(seed=0):
    x = torch.randn(B, CH, H, W, generator=gen(100 + seed))
    return x, torch.arange(B)


@pytest.mark.parametrize("name", MIXERS.names())
def test_output_contract_and_determinism(name):
    mixer = build_mixer(name, COUNTS)
    x, y = batch()
    x_m, y_a, y_b, lam = mixer(x, y, gen(7))
    assert x_m.shape == x.shape and y_a.shape == y_b.shape == lam.shape == (B,)
    assert lam.dtype == torch.float32 and torch.all((lam >= 0) & (lam <= 1))
    torch.testing.assert_close(y_a, y)
    assert sorted(y_b.tolist()) == y.tolist()  # partners form a permutation
    again = mixer(x, y, gen(7))
    for first, second in zip((x_m, y_a, y_b, lam), again):
        assert torch.equal(first, second)
    if name != "none":
        other = mixer(x, y, gen(8))
        assert not torch.equal(other[0], x_m)


def test_none_is_identity():
    x, y = batch()
    x_m, y_a, y_b, lam = build_mixer("none", COUNTS)(x, y, gen(0))
    assert torch.equal(x_m, x) and torch.equal(y_a, y) and torch.equal(y_b, y)
    assert torch.equal(lam, torch.ones(B))


def test_mixup_is_convex_combination_with_partner():
    x, y = batch()
    x_m, _, y_b, lam = build_mixer("mixup", COUNTS, alpha=0.4)(x, y, gen(3))
    assert torch.all(lam == lam[0]) and 0 < float(lam[0]) < 1
    lam_ = float(lam[0])
    torch.testing.assert_close(x_m, lam_ * x + (1 - lam_) * x[y_b])


def test_mixup_leaves_global_rngs_alone():
    torch.manual_seed(0)
    np.random.seed(0)
    expected_torch, expected_np = torch.rand(3), np.random.rand(3)
    torch.manual_seed(0)
    np.random.seed(0)
    x, y = batch()
    for name in MIXERS.names():
        build_mixer(name, COUNTS)(x, y, gen(1))
    assert torch.equal(torch.rand(3), expected_torch) and np.array_equal(np.random.rand(3), expected_np)


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_box_area_matches_lam(seed):
    # sample i is the constant image i + 1, so every pixel names the sample it came from
    x = (torch.arange(B, dtype=torch.float32) + 1).view(B, 1, 1, 1).expand(B, CH, H, W).contiguous()
    y = torch.arange(B)
    x_m, _, y_b, lam = build_mixer("cutmix", COUNTS)(x, y, gen(seed))
    from_partner = x_m[:, 0] == (y_b + 1).float().view(B, 1, 1)
    own = x_m[:, 0] == (y + 1).float().view(B, 1, 1)
    assert torch.all(from_partner | own)
    distinct = y_b != y
    area = from_partner[distinct].float().mean(dim=(1, 2))
    torch.testing.assert_close(area, 1 - lam[distinct])
    # one shared box: its rows and columns form a rectangle
    mask = from_partner[distinct][0]
    rows, cols = mask.any(1), mask.any(0)
    assert int(mask.sum()) == int(rows.sum()) * int(cols.sum())


def test_remix_rule_on_hand_picked_counts():
    n_a = torch.tensor([300, 300, 300, 10, 10, 10, 50, 300])
    n_b = torch.tensor([10, 10, 100, 300, 300, 300, 50, 0])
    lam = torch.tensor([0.3, 0.7, 0.3, 0.8, 0.3, 0.45, 0.2, 0.1])
    # 30 >= 3 and lam < .5 -> 0 | lam not < .5 -> lam | ratio 3 >= 3 -> 0 | ratio 1/30 <= 1/3 and 1 - .8 < .5 -> 1 |
    # 1 - .3 not < .5 -> lam | 1 - .45 not < .5 -> lam | ratio 1 -> lam | n_b = 0: ratio inf >= 3 and lam < .5 -> 0
    expected = torch.tensor([0.0, 0.7, 0.0, 1.0, 0.3, 0.45, 0.2, 0.0])
    torch.testing.assert_close(remix_label_weight(n_a, n_b, lam, kappa=3.0, tau=0.5), expected)


def test_remix_mixes_like_mixup_and_applies_rule():
    x, y = batch()
    x_mix, _, y_b_mix, lam_x = build_mixer("mixup", COUNTS, alpha=0.5)(x, y, gen(11))
    x_m, y_a, y_b, lam_y = build_mixer("remix", COUNTS, alpha=0.5, kappa=2.0, tau=0.6)(x, y, gen(11))
    assert torch.equal(x_m, x_mix) and torch.equal(y_b, y_b_mix)
    lx = float(lam_x[0])
    for i in range(B):
        n_a, n_b = COUNTS[int(y_a[i])], COUNTS[int(y_b[i])]
        if n_a / n_b >= 2.0 and lx < 0.6:
            want = 0.0
        elif n_a / n_b <= 1 / 2.0 and 1 - lx < 0.6:
            want = 1.0
        else:
            want = lx
        assert abs(float(lam_y[i]) - want) < 1e-6, (i, n_a, n_b, lx)


def test_unknown_mixer_lists_choices():
    with pytest.raises(ConfigError, match="valid choices: .*cutmix.*mixup.*none.*remix"):
        build_mixer("manifold", COUNTS)
    with pytest.raises(ConfigError, match="mixer 'mixup': beta: unknown key; valid keys: alpha"):
        build_mixer("mixup", COUNTS, beta=1.0)


@pytest.mark.parametrize("name,params,pattern", [
    ("mixup", {"alpha": 0.0}, "mixer 'mixup': alpha: 0.0: must be > 0"),
    ("cutmix", {"alpha": -1.0}, "mixer 'cutmix': alpha: -1.0: must be > 0"),
    ("remix", {"kappa": 0.5}, "kappa: 0.5: must be >= 1"),
    ("remix", {"tau": 1.5}, "tau: 1.5: must be <= 1"),
    ("remix", {"alpha": "one"}, "alpha: 'one': must be a number"),
])
def test_bad_parameters(name, params, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_mixer(name, COUNTS, **params)


def test_bad_batch_and_counts():
    mixer = build_mixer("mixup", COUNTS)
    x, y = batch()
    with pytest.raises(ConfigError, match=r"\(B, C, H, W\)"):
        mixer(x[:, 0], y, gen(0))
    with pytest.raises(ConfigError, match="labels"):
        mixer(x, y[:-1], gen(0))
    with pytest.raises(ConfigError, match="class_counts"):
        build_mixer("remix", [3, -1])
