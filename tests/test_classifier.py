"""Stage-2 methods on tiny synthetic features: each checked against its formula or a known equivalence."""
import copy
import importlib
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltpipe.classifier import STAGE2, Stage2Data, fit_stage2
from ltpipe.classifier.base import plain_copy
from ltpipe.classifier.bbn import BBNHead, CumulativeLearning, bbn_alpha
from ltpipe.classifier.tau_norm import tau_normalized
from ltpipe.classifier.train import Recipe, fit
from ltpipe.models.heads import LinearHead, load_head, save_head
from ltpipe.classifier.lws import ScaledLogits
from ltpipe.errors import ConfigError
from ltpipe.losses import build_loss
from ltpipe.samplers import ClassAwareSampler, build_sampler
from ltpipe.stage2 import weight_norms

COUNTS = [100, 50, 30, 20]
C, D, VAL_PER_CLASS = len(COUNTS), 8, 10
TRAINING = ["crt", "lws", "bbn", "weight_balancing", "mislas"]
FAST = dict(epochs=2, progress=False)
SMALL = {name: FAST for name in TRAINING}


def clusters(counts, generator, spread=0.3):
    """Well-separated Gaussian clusters around the scaled basis vectors e_0 .. e_{C-1} of R^D."""
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    centers = 4.0 * torch.eye(len(counts), D)
    return centers[labels] + spread * torch.randn(len(labels), D, generator=generator), labels


def base_head(kind: str, generator) -> LinearHead:
    """A stage-1-like head: class norms decreasing with frequency (the long-tail bias tau-norm undoes)."""
    if kind == "cosine":
        head = LinearHead(D, C, bias=False, normalize_input=True, normalize_weight=True, scale=2.0)
    else:
        head = LinearHead(D, C, bias=True, normalize_input=kind == "centred", center_input=kind == "centred")
        head.bias.data = torch.randn(C, generator=generator)
        if head.center is not None:
            head.center.data = torch.randn(D, generator=generator)
    norms = torch.tensor([3.0, 2.0, 1.0, 0.5])
    head.weight.data = norms[:, None] * (torch.eye(C, D) + 0.3 * torch.randn(C, D, generator=generator))
    return head


def make_data(kind: str = "plain", seed: int = 0, val_per_class: int = VAL_PER_CLASS) -> Stage2Data:
    g = torch.Generator().manual_seed(123)
    train_x, train_y = clusters(COUNTS, g)
    val_x, val_y = clusters([val_per_class] * C, g)
    return Stage2Data(train_features=train_x, train_labels=train_y, val_features=val_x, val_labels=val_y,
                      class_counts=list(COUNTS), base_head=base_head(kind, g), seed=seed)


@pytest.fixture(params=["plain", "centred", "cosine"])
def data(request):
    return make_data(request.param)


def stage1_weight(head: LinearHead) -> torch.Tensor:
    w = head.weight.detach()
    return w / w.norm(dim=1, keepdim=True) if head.normalize_weight else w


def g_input(head: LinearHead, x: torch.Tensor) -> torch.Tensor:
    """The stage-1 head's input transform, written out: x, or (x - mu) / ||x - mu||."""
    if head.center is not None:
        x = x - head.center
    return x / x.norm(dim=1, keepdim=True) if head.normalize_input else x


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------- none / tau-norm


def test_none_is_a_copy_of_the_stage1_head(data):
    head, info = fit_stage2("none", data)
    assert head is not data.base_head and info == {}
    torch.testing.assert_close(head(data.val_features), data.base_head(data.val_features), rtol=0, atol=0)


def test_tau_zero_keeps_the_weight_and_drops_the_bias(data):
    head, info = fit_stage2("tau_norm", data, tau=0.0)
    b = data.base_head
    expected = b.scale * g_input(b, data.val_features) @ stage1_weight(b).T
    torch.testing.assert_close(head(data.val_features), expected)
    bias = 0 if b.bias is None else b.scale * b.bias.detach()
    torch.testing.assert_close(head(data.val_features), b(data.val_features).detach() - bias)
    assert head.bias is None and info == {"tau": 0.0}


def test_tau_one_equalises_weight_norms(data):
    head, _ = fit_stage2("tau_norm", data, tau=1.0)
    torch.testing.assert_close(head.effective_weight().norm(dim=1), torch.ones(C))
    direction = F.normalize(stage1_weight(data.base_head), dim=1)
    torch.testing.assert_close(head.weight.detach(), direction)


def test_tau_none_picks_the_validation_argmax(data):
    head, info = fit_stage2("tau_norm", data, grid_start=0.0, grid_stop=2.0, grid_num=9)
    b = data.base_head
    w, gx = stage1_weight(b), g_input(b, data.val_features)
    grid = np.linspace(0.0, 2.0, 9)
    accs = [((b.scale * gx @ (w / w.norm(dim=1, keepdim=True) ** t).T).argmax(1) == data.val_labels)
            .double().mean().item() for t in grid]
    best = accs.index(max(accs))
    assert info["tau_grid"] == pytest.approx(list(grid))
    assert info["val_balanced_acc"] == pytest.approx(accs)  # a balanced val split: mean recall = top-1
    assert info["tau"] == pytest.approx(grid[best])
    torch.testing.assert_close(head.weight.detach(), w / w.norm(dim=1, keepdim=True) ** grid[best])


def reference_tau_norm_scores(weight, features, labels):
    """classifier-balancing's tau_norm.py (facebookresearch/classifier-balancing), its loop over
    np.linspace(0, 2, 21) written out: pnorm, dot product, argmax, then preds2accs's score, the mean of shot_acc's
    per-class accuracies over the classes in the evaluated labels."""
    labels = labels.numpy()
    scores = []
    for p in np.linspace(0, 2, 21):
        norm = torch.norm(weight, 2, 1)
        ws = weight.clone()
        for i in range(weight.size(0)):
            ws[i] = ws[i] / torch.pow(norm[i], p)
        preds = torch.mm(features, ws.t()).max(dim=1)[1].numpy()
        scores.append(np.mean([(preds[labels == c] == c).sum() / (labels == c).sum() for c in np.unique(labels)]))
    return scores


def test_tau_is_chosen_by_the_authors_score_on_an_imbalanced_val_split():
    g = torch.Generator().manual_seed(123)
    train_x, train_y = clusters(COUNTS, g, spread=1.0)
    val_x, val_y = clusters([40, 20, 10, 5], g, spread=1.0)  # val as long-tailed as train
    data = Stage2Data(train_features=train_x, train_labels=train_y, val_features=val_x, val_labels=val_y,
                      class_counts=list(COUNTS), base_head=base_head("plain", g), seed=0)
    head, info = fit_stage2("tau_norm", data)
    w = data.base_head.effective_weight().detach()
    expected = reference_tau_norm_scores(w, val_x, val_y)
    assert info["val_balanced_acc"] == pytest.approx(expected)
    assert info["tau"] == pytest.approx(np.linspace(0, 2, 21)[int(np.argmax(expected))])
    # top-1 accuracy, which the head classes dominate here, would have kept the head-biased weights
    micro = [(val_x @ (w / w.norm(dim=1, keepdim=True) ** t).T).argmax(1).eq(val_y).double().mean().item()
             for t in info["tau_grid"]]
    assert info["tau_grid"][int(np.argmax(micro))] < info["tau"] - 0.5


def test_tau_ties_go_to_the_smallest_tau():
    # a cosine base has unit norms, so every tau gives the same accuracy
    _, info = fit_stage2("tau_norm", make_data("cosine"), grid_start=0.5, grid_stop=1.5, grid_num=3)
    assert len(set(info["val_balanced_acc"])) == 1 and info["tau"] == 0.5


def test_tau_norm_bad_input():
    data = make_data(val_per_class=0)
    with pytest.raises(ConfigError, match="validation split"):
        fit_stage2("tau_norm", data)
    fit_stage2("tau_norm", data, tau=1.0)  # a fixed tau needs no validation split
    with pytest.raises(ConfigError, match=r"tau must be a finite number in \[0"):
        fit_stage2("tau_norm", make_data(), tau=-0.5)
    with pytest.raises(ConfigError, match="grid_num must be an integer >= 1"):
        fit_stage2("tau_norm", make_data(), grid_num=0)
    with pytest.raises(ConfigError, match="grid_stop"):
        fit_stage2("tau_norm", make_data(), grid_start=1.0, grid_stop=0.5)


# ---------------------------------------------------------------- LWS


def test_lws_at_init_reproduces_stage1_logits(data):
    model = ScaledLogits(copy.deepcopy(data.base_head))
    expected = data.base_head(data.val_features).detach()
    torch.testing.assert_close(model(data.val_features).detach(), expected)
    torch.testing.assert_close(model.fold()(data.val_features), expected)


def test_lws_learns_only_the_scale(data):
    head, info = fit_stage2("lws", data, **FAST)
    f = torch.tensor(info["scales"])
    assert not torch.allclose(f, torch.ones(C)), "the scales should move"
    w = stage1_weight(data.base_head)
    torch.testing.assert_close(head.weight.detach(), f[:, None] * w)
    torch.testing.assert_close(F.normalize(head.weight.detach(), dim=1), F.normalize(w, dim=1))
    if data.base_head.bias is not None:
        torch.testing.assert_close(head.bias.detach(), f * data.base_head.bias.detach())
    torch.testing.assert_close(head(data.val_features), f * data.base_head(data.val_features).detach())


# ---------------------------------------------------------------- NCM


def reference_cl2n_centroids(feats, labels):
    """classifier-balancing run_networks.py (centroids_cal with feat_type cl2n): the train mean and the class means
    of the centred, L2-normalised features."""
    featmean = feats.mean(0)
    z = feats - featmean
    z = z / torch.norm(z, 2, 1, keepdim=True)
    return featmean, torch.stack([z[labels == i].mean(0) for i in torch.unique(labels)])


def reference_knn_logits(x, featmean, centroids, dist_type):
    """classifier-balancing models/KNNClassifier.py forward (feat_type cl2n): l2 = minus the squared distance."""
    x = x - featmean
    x = x / torch.norm(x, 2, 1, keepdim=True)
    AB = x @ centroids.t()
    if dist_type == "l2":
        return -((x ** 2).sum(1, keepdim=True) + (centroids ** 2).sum(1, keepdim=True).t() - 2 * AB)
    return AB / x.size(1)


def test_ncm_is_the_authors_l2_nearest_class_mean():
    data = make_data()
    head, info = fit_stage2("ncm", data)
    mean, centroids = reference_cl2n_centroids(data.train_features, data.train_labels)
    torch.testing.assert_close(head.center, mean)
    expected = reference_knn_logits(data.val_features, mean, centroids, "l2")
    torch.testing.assert_close(head(data.val_features), expected, rtol=1e-5, atol=1e-5)
    assert info["probabilistic"] is False
    assert torch.equal(head(data.val_features).argmax(1), data.val_labels)


def test_ncm_cosine_scores_renormalised_class_means():
    data = make_data()
    head, _ = fit_stage2("ncm", data, distance="cosine")
    mean, centroids = reference_cl2n_centroids(data.train_features, data.train_labels)
    x = data.val_features
    # the reference's cos option divides by D instead of normalising the means: the same score per class up to |m_c|
    cosine = reference_knn_logits(x, mean, centroids, "cos") * x.shape[1] / centroids.norm(dim=1)
    torch.testing.assert_close(head(x), cosine, rtol=1e-5, atol=1e-5)
    assert head.bias is None


def test_ncm_l2_and_cosine_differ_when_class_spreads_differ():
    # a tight class has a long mean: l2 favours it, cosine does not
    g = torch.Generator().manual_seed(0)
    directions = F.normalize(torch.randn(2, D, generator=g), dim=1)
    spread = torch.tensor([2.0, 0.2])
    y = torch.arange(2).repeat_interleave(200)
    x = 5 * directions[y] + spread[y, None] * torch.randn(400, D, generator=g)
    mean, centroids = reference_cl2n_centroids(x, y)
    data = Stage2Data(train_features=x, train_labels=y, val_features=x, val_labels=y, class_counts=[200, 200],
                      base_head=LinearHead(D, 2), seed=0)
    l2, _ = fit_stage2("ncm", data)
    cosine, _ = fit_stage2("ncm", data, distance="cosine")
    assert not torch.equal(l2(x).argmax(1), cosine(x).argmax(1))
    torch.testing.assert_close(l2(x), reference_knn_logits(x, mean, centroids, "l2"), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- cRT


def test_crt_keeps_base_head_and_learns_separable_data():
    data = make_data()
    before = state(data.base_head)
    head, info = fit_stage2("crt", data, epochs=20, progress=False)
    assert_same_state(state(data.base_head), before)
    assert len(info["loss_curve"]) == 20 and info["loss_curve"][-1] < info["loss_curve"][0]
    assert (head(data.val_features).argmax(1) == data.val_labels).float().mean() == 1.0


def normed_linear(x, weight_in_out):
    """LDAM-DRW models/resnet_cifar.py NormedLinear.forward (its weight is (in_features, out_features))."""
    return F.normalize(x, dim=1).mm(F.normalize(weight_in_out, dim=0))


def test_crt_with_a_cosine_loss_gets_ldams_normed_linear():
    assert build_loss("ldam", COUNTS).cosine_scale == 30.0
    head, _ = fit_stage2("crt", make_data(), loss="ldam", **FAST)
    assert head.bias is None
    x = make_data().val_features
    torch.testing.assert_close(head(x), 30.0 * normed_linear(x, head.weight.detach().T))  # s * cos
    torch.testing.assert_close(head(0.1 * x), head(x))


def _no_fit(*args, **kwargs):
    return []


def test_crt_starts_from_the_losss_initial_head(monkeypatch):
    monkeypatch.setattr(importlib.import_module("ltpipe.classifier.crt"), "fit", _no_fit)
    sigmoid, _ = fit_stage2("crt", make_data(), loss="cb_focal")
    torch.testing.assert_close(sigmoid.bias.detach(), torch.full((C,), -math.log(C - 1)))  # CB's prior 1/C
    cosine, _ = fit_stage2("crt", make_data(), loss="ldam")
    torch.testing.assert_close(cosine.weight.detach().norm(dim=1), torch.ones(C))  # NormedLinear's unit init


@pytest.mark.parametrize("derive", [
    lambda b: tau_normalized(b, 0.0), lambda b: tau_normalized(b, 1.0), lambda b: ScaledLogits(b).fold(), plain_copy,
    lambda b: fit_stage2("none", make_data("cosine"))[0],
])
def test_heads_derived_from_a_cosine_head_keep_its_logits(derive):
    data = make_data("cosine")
    base, x = data.base_head, data.val_features
    expected = 2.0 * normed_linear(x, base.weight.detach().T)  # the fixture's scale 2
    torch.testing.assert_close(base(x), expected)
    derived = derive(base)
    torch.testing.assert_close(derived(x), expected)
    torch.testing.assert_close(derived(3.0 * x), expected)  # still normalises its input


# ---------------------------------------------------------------- BBN


def reference_alpha(epoch_1based, max_epoch):
    """Megvii-Nanjing/BBN lib/core/combiner.py: div_epoch and the parabolic decay of bbn_mix."""
    div_epoch = 100 * (max_epoch // 100 + 1) if max_epoch in [90, 180] else max_epoch
    return 1 - ((epoch_1based - 1) / div_epoch) ** 2


@pytest.mark.parametrize("total", [2, 10, 90, 180, 200])
def test_bbn_alpha_is_the_official_parabolic_decay(total):
    # fit counts epochs from 0; the official train.py from 1
    assert [bbn_alpha(t, total) for t in range(total)] == pytest.approx(
        [reference_alpha(e, total) for e in range(1, total + 1)])
    assert bbn_alpha(0, total) == 1.0 and bbn_alpha(total - 1, total) > 0
    _, info = fit_stage2("bbn", make_data(), **FAST)
    assert info["alpha"] == [reference_alpha(e, 2) for e in (1, 2)]


def test_bbn_infers_with_both_branches_at_weight_one():
    head, _ = fit_stage2("bbn", make_data(), **FAST)
    assert head.kwargs == dict(in_features=D, num_classes=C)
    x = make_data().val_features
    # the official network at test time: feature = cat(f_cb(x), f_rb(x)), output = fc(feature); here f_cb = f_rb = id
    W, b = head.classifier.weight.detach(), head.classifier.bias.detach()
    expected = torch.cat([x, x], dim=1) @ W.T + b
    torch.testing.assert_close(head(x), expected)
    torch.testing.assert_close(head(x), x @ W[:, :D].T + x @ W[:, D:].T + b)
    torch.testing.assert_close(weight_norms(head), (W[:, :D] + W[:, D:]).norm(dim=1))


def test_bbn_cumulative_loss_is_the_official_bbn_mix():
    g = torch.Generator().manual_seed(0)
    head = BBNHead(D, C)
    objective = CumulativeLearning(head, build_loss("ce", COUNTS))
    objective.set_epoch(3, 4)
    l = reference_alpha(4, 4)
    x_c, x_r = torch.randn(7, D, generator=g), torch.randn(7, D, generator=g)
    y_c, y_r = torch.randint(0, C, (7,), generator=g), torch.randint(0, C, (7,), generator=g)
    output = head.classifier(2 * torch.cat((l * x_c, (1 - l) * x_r), dim=1))
    expected = l * F.cross_entropy(output, y_c) + (1 - l) * F.cross_entropy(output, y_r)
    torch.testing.assert_close(objective([(x_c, y_c), (x_r, y_r)]), expected)


def test_bbn_does_not_collapse_onto_one_class():
    # overlapping clusters, imbalance 50: each branch alone would favour its sampler's classes
    g = torch.Generator().manual_seed(7)
    counts = [500, 150, 40, 10]
    train_x, train_y = clusters(counts, g, spread=1.5)
    val_x, val_y = clusters([100] * C, g, spread=1.5)
    data = Stage2Data(train_features=train_x, train_labels=train_y, val_features=val_x, val_labels=val_y,
                      class_counts=counts, base_head=base_head("plain", g), seed=0)
    head, _ = fit_stage2("bbn", data, progress=False)
    pred = head(val_x).argmax(1)
    shares = torch.bincount(pred, minlength=C).double() / len(pred)
    recalls = torch.stack([(pred[val_y == c] == c).double().mean() for c in range(C)])
    assert shares.max() < 0.45 and recalls.min() > 0.4, (shares, recalls)
    assert (pred == val_y).double().mean() > 0.7


def test_bbn_refuses_a_loss_that_needs_a_cosine_classifier(monkeypatch):
    monkeypatch.setattr(importlib.import_module("ltpipe.classifier.bbn"), "fit", _no_training)
    with pytest.raises(ConfigError, match="cosine classifier"):
        fit_stage2("bbn", make_data(), loss="ldam")


# ---------------------------------------------------------------- MiSLAS


def test_mislas_trains_the_classifier_and_scales_as_the_reference_cifar10_config(monkeypatch):
    seen = {}

    def capture(params, data, samplers, objective, recipe, **kwargs):
        seen.update(params=params, samplers=samplers, loss_fn=objective.loss_fn, recipe=recipe)
        return []

    monkeypatch.setattr(importlib.import_module("ltpipe.classifier.mislas"), "fit", capture)
    fit_stage2("mislas", make_data())
    # config/cifar10/cifar10_imb001_stage2_mislas.yaml: smooth_head 0.3, smooth_tail 0.0, lr_factor 0.5, lr 0.1,
    # batch 128, weight decay 2e-4, 10 epochs; optimizer groups [classifier at lr_factor * lr, lws at lr]
    classifier, scales = seen["params"]
    assert classifier["lr"] == pytest.approx(0.05) and len(classifier["params"]) == 2  # W and b
    assert "lr" not in scales and scales["params"][0].shape == (C,)
    r = seen["recipe"]
    assert (r.lr, r.batch_size, r.weight_decay, r.epochs, r.momentum) == (0.1, 128, 2e-4, 10, 0.9)
    (sampler,) = seen["samplers"]
    assert isinstance(sampler, ClassAwareSampler) and sampler.samples_per_class == 4
    # methods.py LabelAwareSmoothing, concave: smooth_tail + (smooth_head - smooth_tail) * sin((n - n_K) pi / (2 (n_1 - n_K)))
    n = np.array(COUNTS, dtype=float)
    reference = 0.0 + (0.3 - 0.0) * np.sin((n - n.min()) * np.pi / (2 * (n.max() - n.min())))
    torch.testing.assert_close(seen["loss_fn"].smoothing, torch.tensor(reference, dtype=torch.float32))


# ---------------------------------------------------------------- weight balancing


def test_weight_balancing_projects_norms_below_the_threshold():
    data = make_data()
    norms = data.base_head.weight.detach().norm(dim=1)
    threshold = norms.min() + 0.2 * (norms.max() - norms.min())
    head, info = fit_stage2("weight_balancing", data, max_norm=0.2, **FAST)
    assert info["max_norm_threshold"] == pytest.approx(threshold.item())
    final = head.weight.detach().norm(dim=1)
    assert (final <= threshold + 1e-6).all()
    loose, _ = fit_stage2("weight_balancing", data, max_norm=1.0, **FAST)
    assert loose.weight.detach().norm(dim=1).max() > threshold, "without the tight threshold the norms stay large"


def test_weight_balancing_projects_once_per_epoch_with_the_reference_loss(monkeypatch):
    # LTR-weight-balancing utils/trainval.py calls pgdFunc.PGD(model) after each training epoch, not each step;
    # demo2 trains with CB_loss(..., "softmax", 0.9999), i.e. cb_softmax_bce
    module = importlib.import_module("ltpipe.classifier.weight_balancing")
    real_fit, seen = module.fit, {"projections": 0}

    def counting_fit(params, data, samplers, objective, recipe, *, project, **kwargs):
        seen["loss_fn"] = objective.loss_fn

        def counted():
            seen["projections"] += 1
            project()
        return real_fit(params, data, samplers, objective, recipe, project=counted, **kwargs)

    monkeypatch.setattr(module, "fit", counting_fit)
    fit_stage2("weight_balancing", make_data(), epochs=3, progress=False)  # 200 samples, batch 64: 4 steps per epoch
    assert seen["projections"] == 3
    assert type(seen["loss_fn"]) is type(build_loss("cb_softmax_bce", COUNTS))


# ---------------------------------------------------------------- augmented train views


def with_views(d: Stage2Data, views: torch.Tensor) -> Stage2Data:
    return Stage2Data(d.train_features, d.train_labels, d.val_features, d.val_labels, COUNTS, d.base_head, d.seed,
                      train_views=views)


def test_the_training_loop_takes_view_e_mod_v_at_epoch_e():
    d = make_data()
    d = with_views(d, torch.stack([torch.full_like(d.train_features, v) for v in (1.0, 2.0)]))
    w, seen = torch.zeros(1, requires_grad=True), []

    class Spy:
        def set_epoch(self, epoch, total):
            seen.append(set())

        def __call__(self, batches):
            (x, _), = batches
            seen[-1].update(x.unique().tolist())
            return (w * x).sum()

    recipe = Recipe(epochs=3, lr=0.1, batch_size=64, momentum=0.9, weight_decay=0.0, schedule="cosine",
                    progress=False)
    fit([w], d, [build_sampler("instance", d.train_labels, C)], Spy(), recipe)
    assert seen == [{1.0}, {2.0}, {1.0}]


def test_crt_learns_from_the_views_not_the_plain_features():
    d = make_data()
    g = torch.Generator().manual_seed(5)
    views = torch.stack([clusters(COUNTS, g)[0] for _ in range(2)])  # the same labels, fresh noise per view
    noise = torch.randn(d.train_features.shape, generator=g)
    d = Stage2Data(noise, d.train_labels, d.val_features, d.val_labels, COUNTS, d.base_head, 0, train_views=views)
    head, _ = fit_stage2("crt", d, epochs=20, progress=False)
    assert (head(d.val_features).argmax(1) == d.val_labels).float().mean() == 1.0


def test_views_of_the_wrong_shape_are_rejected():
    d = make_data()
    for bad in (d.train_features, d.train_features[None, :-1], torch.zeros(0, *d.train_features.shape)):
        with pytest.raises(ConfigError, match="train_views must be \\(V, N, D\\)"):
            with_views(d, bad)


# ---------------------------------------------------------------- every method


@pytest.mark.parametrize("method", TRAINING)
def test_same_seed_same_head(method):
    a, info_a = fit_stage2(method, make_data(seed=3), **SMALL[method])
    b, info_b = fit_stage2(method, make_data(seed=3), **SMALL[method])
    assert_same_state(state(a), state(b))
    assert info_a == info_b
    c, _ = fit_stage2(method, make_data(seed=4), **SMALL[method])
    assert any(not torch.equal(v, state(c)[k]) for k, v in state(a).items())


def test_training_leaves_the_global_rng_alone():
    data = make_data()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for method in TRAINING:
        fit_stage2(method, data, **SMALL[method])
    assert torch.equal(torch.rand(3), expected)


# tde needs a stage 1 with the causal head: tests/test_causal.py runs it on one.
@pytest.mark.parametrize("method", [m for m in STAGE2.names() if m != "tde"])
def test_every_method_smoke_and_save_load_round_trip(method, tmp_path, data):
    before = state(data.base_head)
    head, info = fit_stage2(method, data, **SMALL.get(method, {}))
    assert_same_state(state(data.base_head), before)
    logits = head(data.val_features)
    assert logits.shape == (C * VAL_PER_CLASS, C) and torch.isfinite(logits).all()
    json.dumps(info, allow_nan=False)
    save_head(tmp_path / "head.safetensors", head)
    again = load_head(tmp_path / "head.safetensors")
    assert type(again) is type(head)
    torch.testing.assert_close(again(data.val_features), logits, rtol=0, atol=0)


# ---------------------------------------------------------------- bad input


def test_unknown_method_and_parameter_are_rejected_with_choices():
    with pytest.raises(ConfigError, match="unknown stage-2 method 'crtt'.*crt.*tau_norm"):
        fit_stage2("crtt", make_data())
    with pytest.raises(ConfigError, match="stage-2 method 'tau_norm': taux: unknown key; did you mean tau?"):
        fit_stage2("tau_norm", make_data(), taux=1.0)


@pytest.mark.parametrize("method", TRAINING)
@pytest.mark.parametrize("bad, message", [
    (dict(epochs=0), "epochs: 0: must be >= 1"),
    (dict(lr=0.0), "lr: 0.0: must be > 0"),
    (dict(lr=-0.1), "lr: -0.1: must be > 0"),
    (dict(batch_size=0), "batch_size: 0: must be >= 1"),
    (dict(schedule="linear"), "unknown lr schedule 'linear'.*cosine"),
])
def test_bad_training_params_fail_before_training(method, bad, message, monkeypatch):
    monkeypatch.setattr(importlib.import_module(f"ltpipe.classifier.{method}"), "fit", _no_training)
    with pytest.raises(ConfigError, match=message):
        fit_stage2(method, make_data(), **bad)


@pytest.mark.parametrize("method", ["crt", "lws", "weight_balancing", "mislas"])
def test_unknown_sampler_fails_before_training(method, monkeypatch):
    monkeypatch.setattr(importlib.import_module(f"ltpipe.classifier.{method}"), "fit", _no_training)
    with pytest.raises(ConfigError, match="unknown sampler 'balanced'.*class_balanced"):
        fit_stage2(method, make_data(), sampler="balanced")


@pytest.mark.parametrize("method", ["crt", "lws", "weight_balancing", "bbn"])
def test_unknown_loss_fails_before_training(method, monkeypatch):
    monkeypatch.setattr(importlib.import_module(f"ltpipe.classifier.{method}"), "fit", _no_training)
    with pytest.raises(ConfigError, match="unknown loss 'cee'.*ce"):
        fit_stage2(method, make_data(), loss="cee")


def test_method_specific_bad_values():
    with pytest.raises(ConfigError, match="max_norm"):
        fit_stage2("weight_balancing", make_data(), max_norm=-1.0)
    with pytest.raises(ConfigError, match="sampler_params: \\[1, 2\\]: must be a mapping"):
        fit_stage2("crt", make_data(), sampler_params=[1, 2])


def test_inconsistent_data_is_rejected():
    d = make_data()
    with pytest.raises(ConfigError, match="labels must lie in"):
        Stage2Data(d.train_features, d.train_labels, d.val_features, d.val_labels, COUNTS[:3], d.base_head, 0)
    with pytest.raises(ConfigError, match="features must be"):
        Stage2Data(d.train_features, d.train_labels[:-1], d.val_features, d.val_labels, COUNTS, d.base_head, 0)
    with pytest.raises(ConfigError, match="stage-1 head"):
        Stage2Data(d.train_features, d.train_labels, d.val_features, d.val_labels, COUNTS, LinearHead(D + 1, C), 0)


def _no_training(*args, **kwargs):
    raise AssertionError("training started before the parameters were validated")
