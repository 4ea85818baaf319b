import copy

import numpy as np
import pytest
import torch

from ltpipe.classifier import STAGE2, Stage2Data, fit_stage2
from ltpipe.classifier.tau_norm import tau_normalized
from ltpipe.errors import ConfigError
from ltpipe.losses import LOSSES
from ltpipe.models.heads import LinearHead
from ltpipe.multilabel.metrics import average_precisions
from ltpipe.tasks import MultiLabel

D, C = 6, 4
# The multi-label setting of the DB paper's re-sampling: a BCE-family loss and class-aware sampling.
MULTILABEL = dict(loss="bce", sampler="class_aware")
FAST = dict(epochs=2, batch_size=32, progress=False, **MULTILABEL)


def fit_multilabel_stage2(method, data, **params):
    if method in ("crt", "lws"):
        params = MULTILABEL | params
    return fit_stage2(method, data, **params)


def multilabel_data(x, y, xv, yv, head, seed):
    return Stage2Data(x, y, xv, yv, y.sum(0).tolist(), head, seed)


def split(n, generator, mixing):
    y = torch.rand(n, C, generator=generator) < torch.tensor([0.5, 0.25, 0.1, 0.05])
    y[~y.any(dim=1), 0] = True
    x = y.float() @ mixing + 0.3 * torch.randn(n, D, generator=generator)
    return x, y


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(C, D, generator=g)
    x, y = split(240, g, mixing)
    xv, yv = split(120, g, mixing)
    torch.manual_seed(0)  # only the throwaway stage-1 head below is drawn from the global generator
    return multilabel_data(x, y, xv, yv, LinearHead(D, C), seed=3)


def val_map(head, data):
    with torch.no_grad():
        return float(np.nanmean(average_precisions(head(data.val_features).numpy(), data.val_labels.numpy())))


def test_registry():
    assert STAGE2.names("multilabel") == ["crt", "lws", "ncm", "none", "tau_norm", "tde"]


def test_data_checks(data):
    assert isinstance(data.task, MultiLabel) and data.num_images == 240 and data.train_labels.dtype == torch.bool
    with pytest.raises(ConfigError, match="every entry 0 or 1"):
        multilabel_data(data.train_features, 2 * data.train_labels.long(), data.val_features, data.val_labels,
                        data.base_head, 0)
    with pytest.raises(ConfigError, match="stage-1 head maps 6 features to 3 classes"):
        multilabel_data(data.train_features, data.train_labels, data.val_features, data.val_labels,
                        LinearHead(D, 3), 0)
    with pytest.raises(ConfigError, match="seed must be an integer"):
        multilabel_data(data.train_features, data.train_labels, data.val_features, data.val_labels,
                        data.base_head, 1.5)
    with pytest.raises(ConfigError, match=r"val labels must be an \(N, 4\) multi-hot matrix"):
        multilabel_data(data.train_features, data.train_labels, data.val_features, data.val_labels[:, :3],
                        data.base_head, 0)


def test_tau_norm_fixed_tau_is_tau_normalized(data):
    head, info = fit_multilabel_stage2("tau_norm", data, tau=0.7)
    expected = tau_normalized(data.base_head, 0.7)
    torch.testing.assert_close(head.weight, expected.weight)
    assert head.bias is None and info == {"tau": 0.7}


def test_validation_map_cannot_choose_tau(data):
    # AP is invariant to w_j / ||w_j||^tau: every tau scores the same mAP, so tau is chosen on micro F1
    maps = [val_map(tau_normalized(data.base_head, t), data) for t in (0.0, 0.5, 1.0, 2.0)]
    np.testing.assert_allclose(maps, maps[0], rtol=1e-12)


def test_tau_norm_on_validation_micro_f1_takes_the_best_tau(data):
    head, info = fit_multilabel_stage2("tau_norm", data)
    assert len(info["tau_grid"]) == 21 and info["tau"] == info["tau_grid"][int(np.argmax(info["val_micro_f1"]))]
    torch.testing.assert_close(head.weight, tau_normalized(data.base_head, info["tau"]).weight)


def test_tau_norm_argument_errors(data):
    with pytest.raises(ConfigError, match="grid_stop"):
        fit_multilabel_stage2("tau_norm", data, grid_start=0.5, grid_stop=0.1)
    with pytest.raises(ConfigError, match="stage-2 method 'tau_norm': epochs: unknown key"):
        fit_multilabel_stage2("tau_norm", data, epochs=3)


def test_crt_learns_and_is_seeded(data):
    head, info = fit_multilabel_stage2("crt", data, epochs=8, batch_size=32, lr=0.5, progress=False)
    assert len(info["loss_curve"]) == 8 and info["loss_curve"][-1] < info["loss_curve"][0]
    assert val_map(head, data) > 0.8 > val_map(data.base_head, data)
    again, _ = fit_multilabel_stage2("crt", data, epochs=8, batch_size=32, lr=0.5, progress=False)
    torch.testing.assert_close(again.weight, head.weight, rtol=0, atol=0)


@pytest.mark.parametrize("loss", LOSSES.names("multilabel"))
def test_crt_with_every_loss_and_sampler(data, loss):
    for sampler in ("class_aware", "instance"):
        head, info = fit_multilabel_stage2("crt", data, **FAST | dict(loss=loss, sampler=sampler))
        assert np.isfinite(info["loss_curve"]).all() and torch.isfinite(head.weight).all()


def test_crt_passes_loss_and_sampler_params(data):
    fast = FAST | {"loss": "db"}
    fit_multilabel_stage2("crt", data, loss_params={"lam": 2.0, "mu": 0.2}, sampler_params={"samples_per_class": 4},
                          **fast)
    with pytest.raises(ConfigError, match="loss_params.tau: unknown key"):
        fit_multilabel_stage2("crt", data, loss_params={"tau": 1.0}, **fast)
    with pytest.raises(ConfigError, match="epochs: 0: must be >= 1"):
        fit_multilabel_stage2("crt", data, epochs=0, progress=False)
    # the DB code's longer class-aware epoch: the lr schedule counts its draws
    head, info = fit_multilabel_stage2("crt", data, sampler_params={"reduce": 1}, **FAST)
    assert len(info["loss_curve"]) == 2


def test_lws_learns_only_scales_and_keeps_map(data):
    base = copy.deepcopy(data.base_head)
    head, info = fit_multilabel_stage2("lws", data, lr=0.05, **FAST)
    f = torch.tensor(info["scales"])
    assert f.shape == (C,) and not torch.allclose(f, torch.ones(C))
    torch.testing.assert_close(head.weight, f[:, None] * base.weight)
    torch.testing.assert_close(head.bias, f * base.bias)
    torch.testing.assert_close(data.base_head.weight, base.weight, rtol=0, atol=0)  # stage-1 head untouched
    assert (f > 0).all()  # positive per-class scales keep every class's score order, hence its AP
    assert abs(val_map(head, data) - val_map(base, data)) < 1e-9


def test_ncm_means_over_every_image_holding_the_class(data):
    x, y = data.train_features, data.train_labels
    z = torch.nn.functional.normalize(x - x.mean(0), dim=1)
    means = torch.stack([z[y[:, c]].mean(0) for c in range(C)])
    l2, _ = fit_multilabel_stage2("ncm", data)
    zv = torch.nn.functional.normalize(data.val_features - x.mean(0), dim=1)
    torch.testing.assert_close(l2(data.val_features), -torch.cdist(zv, means).square(), rtol=1e-5, atol=1e-5)
    cosine, _ = fit_multilabel_stage2("ncm", data, distance="cosine")
    torch.testing.assert_close(cosine.weight.detach(), torch.nn.functional.normalize(means, dim=1))


def test_one_label_per_image_is_the_same_as_its_one_hot_targets():
    """NCM on 1-D labels and on their one-hot rows: one implementation for both formats."""
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(C, (120,), generator=g)
    x = torch.randn(120, D, generator=g)
    counts = torch.bincount(labels, minlength=C).tolist()
    torch.manual_seed(0)
    head = LinearHead(D, C)
    one_hot = torch.nn.functional.one_hot(labels, C).bool()
    single = Stage2Data(x, labels, x[:40], labels[:40], counts, head, 0)
    multi = Stage2Data(x, one_hot, x[:40], one_hot[:40], counts, head, 0)
    a, _ = fit_stage2("ncm", single)
    b, _ = fit_stage2("ncm", multi)
    torch.testing.assert_close(a.weight, b.weight)
