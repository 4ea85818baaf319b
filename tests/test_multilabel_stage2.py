import copy

import numpy as np
import pytest
import torch

from ltpipe.classifier.tau_norm import tau_normalized
from ltpipe.errors import ConfigError
from ltpipe.models.heads import LinearHead
from ltpipe.multilabel.losses import MULTILABEL_LOSSES
from ltpipe.multilabel.metrics import average_precisions
from ltpipe.multilabel.stage2 import MULTILABEL_STAGE2, MultiLabelStage2Data, fit_multilabel_stage2

D, C = 6, 4
FAST = dict(epochs=2, batch_size=32, progress=False)


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
    return MultiLabelStage2Data(x, y, xv, yv, LinearHead(D, C), seed=3)


def val_map(head, data):
    with torch.no_grad():
        return float(np.nanmean(average_precisions(head(data.val_features).numpy(), data.val_targets.numpy())))


def test_registry():
    assert MULTILABEL_STAGE2.names() == ["crt", "lws", "none", "tau_norm"]


def test_data_checks(data):
    assert data.class_counts == data.train_targets.sum(0).tolist() and data.num_images == 240
    with pytest.raises(ConfigError, match="every entry 0 or 1"):
        MultiLabelStage2Data(data.train_features, 2 * data.train_targets.long(), data.val_features, data.val_targets,
                             data.base_head, 0)
    with pytest.raises(ConfigError, match="stage-1 head maps 6 features to 3 classes"):
        MultiLabelStage2Data(data.train_features, data.train_targets, data.val_features, data.val_targets,
                             LinearHead(D, 3), 0)
    with pytest.raises(ConfigError, match="seed must be an integer"):
        MultiLabelStage2Data(data.train_features, data.train_targets, data.val_features, data.val_targets,
                             data.base_head, 1.5)


def test_tau_norm_fixed_tau_is_tau_normalized(data):
    head, info = fit_multilabel_stage2("tau_norm", data, tau=0.7)
    expected = tau_normalized(data.base_head, 0.7)
    torch.testing.assert_close(head.weight, expected.weight)
    assert head.bias is None and info == {"tau": 0.7}


def test_tau_norm_on_validation_map_cannot_choose(data):
    # AP is invariant to w_j / ||w_j||^tau: every tau scores the same and the smallest wins
    _, info = fit_multilabel_stage2("tau_norm", data, criterion="map", grid_start=0.5, grid_num=5)
    assert info["tau"] == 0.5 and info["tau_grid"] == [0.5, 0.875, 1.25, 1.625, 2.0]
    np.testing.assert_allclose(info["val_map"], info["val_map"][0], rtol=1e-12)


def test_tau_norm_on_validation_micro_f1_takes_the_best_tau(data):
    head, info = fit_multilabel_stage2("tau_norm", data)
    assert len(info["tau_grid"]) == 21 and info["tau"] == info["tau_grid"][int(np.argmax(info["val_micro_f1"]))]
    torch.testing.assert_close(head.weight, tau_normalized(data.base_head, info["tau"]).weight)


def test_tau_norm_argument_errors(data):
    with pytest.raises(ConfigError, match="grid_stop=0.1 is below grid_start=0.5"):
        fit_multilabel_stage2("tau_norm", data, grid_start=0.5, grid_stop=0.1)
    with pytest.raises(ConfigError, match="criterion='acc'"):
        fit_multilabel_stage2("tau_norm", data, criterion="acc")
    with pytest.raises(ConfigError, match="takes no parameter 'epochs'"):
        fit_multilabel_stage2("tau_norm", data, epochs=3)


def test_crt_learns_and_is_seeded(data):
    head, info = fit_multilabel_stage2("crt", data, epochs=8, batch_size=32, lr=0.5, progress=False)
    assert len(info["loss_curve"]) == 8 and info["loss_curve"][-1] < info["loss_curve"][0]
    assert val_map(head, data) > 0.8 > val_map(data.base_head, data)
    again, _ = fit_multilabel_stage2("crt", data, epochs=8, batch_size=32, lr=0.5, progress=False)
    torch.testing.assert_close(again.weight, head.weight, rtol=0, atol=0)


@pytest.mark.parametrize("loss", MULTILABEL_LOSSES.names())
def test_crt_with_every_loss_and_sampler(data, loss):
    for sampler in ("class_aware", "instance"):
        head, info = fit_multilabel_stage2("crt", data, loss=loss, sampler=sampler, **FAST)
        assert np.isfinite(info["loss_curve"]).all() and torch.isfinite(head.weight).all()


def test_crt_passes_loss_and_sampler_params(data):
    fit_multilabel_stage2("crt", data, loss="db", loss_params={"lam": 2.0, "mu": 0.2},
                          sampler_params={"num_samples_cls": 4}, **FAST)
    with pytest.raises(ConfigError, match="takes no parameter 'tau'"):
        fit_multilabel_stage2("crt", data, loss="db", loss_params={"tau": 1.0}, **FAST)
    with pytest.raises(ConfigError, match="leave num_samples unset"):
        fit_multilabel_stage2("crt", data, sampler_params={"num_samples": 50}, **FAST)
    with pytest.raises(ConfigError, match="crt: epochs=0"):
        fit_multilabel_stage2("crt", data, epochs=0, progress=False)


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
