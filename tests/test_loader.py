import numpy as np
import pytest
import torch
from imagedata import write_tree
from PIL import Image

from ltpipe.data.augment import build_augment, crop_flip
from ltpipe.data.loader import BatchLoader
from ltpipe.data.prepare import prepare
from ltpipe.data.prepared import PreparedSplit, load_prepared
from ltpipe.errors import ConfigError
from ltpipe.schema import validate_params

N, H, W, C = 40, 6, 5, 3
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def split():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, H, W, C), dtype=torch.uint8, generator=g)
    return PreparedSplit(torch.arange(N) % 4, [str(i) for i in range(N)], images, None)


def aug(**section):
    """train.augment as params.yaml would give it, validated and built."""
    return build_augment(validate_params({"train": {"augment": section}}).train.augment)


def loader(split, train=True, augment=None, batch_size=16, **kw):
    return BatchLoader(split, batch_size=batch_size, mean=MEAN, std=STD, train=train,
                       augment=aug(crop_padding=2, flip=True) if augment is None else augment, **kw)


def collect(batches):
    xs, ys = zip(*batches)
    return torch.cat(xs), torch.cat(ys)


def reference_normalize(images_nhwc):
    x = images_nhwc.double().permute(0, 3, 1, 2) / 255
    return (x - torch.tensor(MEAN, dtype=torch.float64).view(1, -1, 1, 1)) / torch.tensor(STD).view(1, -1, 1, 1)


def slow_crop_flip(image, oy, ox, flip, pad):
    """One image, the textbook way: zero-pad, slice, mirror."""
    h, w, c = image.shape
    padded = np.zeros((h + 2 * pad, w + 2 * pad, c), dtype=image.dtype)
    padded[pad:pad + h, pad:pad + w] = image
    out = padded[oy:oy + h, ox:ox + w]
    return out[:, ::-1] if flip else out


def test_eval_is_exact_normalisation_in_index_order(split):
    order = torch.tensor([5, 0, 39, 5, 12])
    x, y = collect(loader(split, train=False, batch_size=2).batches(order, seed=0))
    assert x.shape == (5, C, H, W) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.allclose(x.double(), reference_normalize(split.images[order]), atol=1e-6)
    assert torch.equal(y, split.labels[order])


def test_crop_flip_matches_per_sample_reference():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (8, 7, 9, 2), dtype=torch.uint8, generator=g)
    pad = 3
    oy, ox = torch.randint(0, 2 * pad + 1, (8,), generator=g), torch.randint(0, 2 * pad + 1, (8,), generator=g)
    flips = torch.tensor([True, False] * 4)
    out = crop_flip(x, oy, ox, flips, pad)
    for b in range(8):
        expected = slow_crop_flip(x[b].numpy(), int(oy[b]), int(ox[b]), bool(flips[b]), pad)
        assert np.array_equal(out[b].numpy(), expected)


def test_train_batches_are_some_crop_and_flip_of_each_image(split):
    pad, order = 2, torch.randperm(N, generator=torch.Generator().manual_seed(3))
    x, y = collect(loader(split).batches(order, seed=7))
    assert x.shape == (N, C, H, W) and torch.equal(y, split.labels[order])
    seen_flips = set()
    for k, i in enumerate(order.tolist()):
        image = split.images[i].numpy()
        matches = [(oy, ox, f) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1) for f in (False, True)
                   if torch.allclose(x[k:k + 1].double(), reference_normalize(torch.from_numpy(
                       slow_crop_flip(image, oy, ox, f, pad).copy())[None]), atol=1e-6)]
        assert matches, f"sample {k} is no crop/flip of image {i}"
        seen_flips |= {f for _, _, f in matches}
    assert seen_flips == {False, True}


def test_flip_only(split):
    order = torch.arange(N)
    x, _ = collect(loader(split, augment=aug(crop_padding=0, flip=True)).batches(order, seed=0))
    plain = reference_normalize(split.images).float()
    same = torch.isclose(x, plain, atol=1e-6).flatten(1).all(1)
    mirrored = torch.isclose(x, plain.flip(3), atol=1e-6).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < N


def test_determinism_by_seed_not_batch_size(split):
    order = torch.randperm(N, generator=torch.Generator().manual_seed(5))
    a = collect(loader(split, batch_size=16).batches(order, seed=3))[0]
    b = collect(loader(split, batch_size=7).batches(order, seed=3))[0]
    c = collect(loader(split, batch_size=16).batches(order, seed=4))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_channels_last_and_partial_last_batch(split):
    batches = list(loader(split, batch_size=16, channels_last=True).batches(torch.arange(N), seed=0))
    assert [len(y) for _, y in batches] == [16, 16, 8]
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x, _ in batches)


@pytest.mark.parametrize("policy", ["randaugment", "autoaugment"])
def test_policies_are_seeded_and_leave_global_rng_alone(split, policy):
    augment = aug(crop_padding=1, flip=True, policy=policy)
    state = torch.get_rng_state()
    a = collect(loader(split, augment=augment).batches(torch.arange(N), seed=1))[0]
    assert torch.equal(state, torch.get_rng_state())
    b = collect(loader(split, augment=augment, batch_size=5).batches(torch.arange(N), seed=1))[0]
    plain = collect(loader(split, augment=aug(crop_padding=1, flip=True)).batches(torch.arange(N), seed=1))[0]
    assert a.shape == (N, C, H, W) and torch.equal(a, b) and not torch.equal(a, plain)


def test_bad_augment_and_args(split):
    with pytest.raises(ConfigError, match="train.augment.crop: unknown key; did you mean train.augment.crop_padding"):
        aug(crop=4)
    with pytest.raises(ConfigError, match="unknown augmentation policy 'trivial'; valid choices: autoaugment, none, "
                                          "randaugment"):
        aug(policy="trivial")
    with pytest.raises(ConfigError, match="train.augment.randaugment.ops: unknown key; did you mean "
                                          "train.augment.randaugment.num_ops"):
        aug(policy="randaugment", randaugment={"ops": 2})
    with pytest.raises(ConfigError, match="valid choices: cifar10, imagenet, svhn"):
        aug(policy="autoaugment", autoaugment={"policy": "mnist"})
    with pytest.raises(ConfigError, match="train.augment.crop_padding: -1: must be >= 0"):
        aug(crop_padding=-1)
    with pytest.raises(ConfigError, match="batch_size"):
        loader(split, batch_size=0)
    with pytest.raises(ConfigError, match="indices must lie in"):
        next(loader(split).batches(torch.tensor([0, N]), seed=0))
    with pytest.raises(ConfigError, match="channel"):
        BatchLoader(split, batch_size=4, mean=[0.5], std=[0.2], train=False)


# ------------------------------------------------------------------------------------------------- streaming

@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    write_tree(root / "data", {"train": {"a": 6, "b": 6}, "test": {"a": 2, "b": 2}}, size=(80, 72))
    params = {"seed": 0, "dataset": {"name": "imagefolder", "in_memory_max_size": 64,
                                     "imagefolder": {"root": str(root / "data"), "image_size": 32}},
              "imbalance": {"profile": "none", "factor": 1, "n_max": None, "class_order": "index"},
              "split": {"val_from": "test", "val_per_class": 1, "test_per_class": 1}}
    prepare(params, root / "out")
    return load_prepared(root / "out")


def stream_loader(prepared, split, train, **kw):
    return BatchLoader(prepared.split(split), batch_size=3, mean=prepared.info["mean"], std=prepared.info["std"],
                       train=train, augment=aug(crop_padding=4, flip=True), image_size=prepared.info["image_size"],
                       **kw)


def test_stream_eval_is_resize_centre_crop(streamed):
    from torchvision.transforms import v2

    data = streamed.split("train")
    order = torch.tensor([3, 0, 11, 7])
    x, y = collect(stream_loader(streamed, "train", False).batches(order, seed=0))
    assert x.shape == (4, 3, 32, 32) and torch.equal(y, data.labels[order])
    resize, crop = v2.Resize(round(32 / 0.875), antialias=True), v2.CenterCrop(32)
    mean, std = torch.tensor(streamed.info["mean"]).view(3, 1, 1), torch.tensor(streamed.info["std"]).view(3, 1, 1)
    for k, i in enumerate(order.tolist()):
        pixels = torch.from_numpy(np.array(crop(resize(Image.open(data.paths[i]).convert("RGB"))))).permute(2, 0, 1)
        assert torch.allclose(x[k], (pixels / 255 - mean) / std, atol=1e-5)


def test_stream_train_is_seeded_across_workers(streamed):
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    a, ya = collect(stream_loader(streamed, "train", True).batches(order, seed=2))
    b, _ = collect(stream_loader(streamed, "train", True, num_workers=2).batches(order, seed=2))
    c, _ = collect(stream_loader(streamed, "train", True).batches(order, seed=3))
    assert a.shape == (12, 3, 32, 32) and torch.equal(ya, streamed.split("train").labels[order])
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_stream_needs_image_size(streamed):
    with pytest.raises(ConfigError, match="image_size"):
        BatchLoader(streamed.split("val"), batch_size=2, mean=[0.5] * 3, std=[0.2] * 3, train=False)
