"""`ltpipe predict` on PIL-made PNGs: a file holding a test image gets exactly the probabilities evaluation gives that
image; bad files are reported one by one while the others are still predicted."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import checkout_baseline, run
from ltpipe.models.heads import LinearHead, load_head, save_head
from ltpipe.cli import main
from ltpipe.data.loader import BatchLoader
from ltpipe.data.prepared import load_prepared
from ltpipe.errors import ConfigError
from ltpipe.models import Classifier, load_classifier, save_classifier
from ltpipe.predict import load_predictor
from test_evaluate import write_prepared

CLASSES = ["a", "b", "c"]
COUNTS = [30, 10, 3]


def build_model(root, in_chans, generator):
    """A random resnet8 as stage 1 and a separate random linear head as stage 2, saved where the pipeline puts them."""
    model = Classifier("resnet8", len(CLASSES), in_chans).eval()
    head = LinearHead(model.backbone.num_features, len(CLASSES), normalize_input=True).eval()
    with torch.no_grad():
        for p in list(model.parameters()) + list(head.parameters()):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    save_classifier(root / "artifacts/stage1", model)
    save_head(root / "artifacts/stage2/head.safetensors", head)
    return root


def random_pixels(n, size, channels, generator):
    return torch.randint(0, 256, (n, size, size, channels), generator=generator, dtype=torch.uint8).numpy()


def save_png(path, pixels):
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)
    return str(path)


def hand_probabilities(root, pixels, mean, std):
    """softmax(head(backbone((x / 255 - mean) / std))), written out here rather than through the data layer."""
    x = torch.tensor(pixels).permute(0, 3, 1, 2).double() / 255
    x = ((x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)).float()
    with torch.no_grad():
        features = load_classifier(root / "artifacts/stage1").backbone(x)
        logits = load_head(root / "artifacts/stage2/head.safetensors")(features)
    return torch.softmax(logits.double(), 1)


@pytest.fixture
def gray_project(tmp_path):
    """In-memory grey 8x8 data set (like digits) whose test split holds 4 random images, saved as PNGs too."""
    generator = torch.Generator().manual_seed(0)
    pixels = random_pixels(4, 8, 1, generator)
    write_prepared(tmp_path / "data/prepared", CLASSES, COUNTS, [0, 1, 2, 0], images=pixels, mean=(0.4,), std=(0.3,))
    build_model(tmp_path, 1, generator)
    files = [save_png(tmp_path / f"img{i}.png", p) for i, p in enumerate(pixels)]
    return tmp_path, pixels, files


def test_png_of_a_test_image_gets_the_probabilities_of_evaluation(gray_project):
    root, pixels, files = gray_project
    predictions, errors = load_predictor(root).predict(files, top_k=3)
    assert errors == {} and [p.path for p in predictions] == files
    expected = hand_probabilities(root, pixels, [0.4], [0.3])
    # The data layer's evaluation batches of the same images give the same numbers.
    prepared = load_prepared(root / "data/prepared")
    loader = BatchLoader(prepared.split("test"), batch_size=2, mean=[0.4], std=[0.3], train=False)
    predictor = load_predictor(root)
    with torch.no_grad():
        evaluated = torch.cat([predictor.head(predictor.backbone(x)) for x, _ in loader.batches(torch.arange(4), 0)])
    torch.testing.assert_close(torch.softmax(evaluated.double(), 1), expected, rtol=1e-5, atol=1e-6)
    for row, prediction in enumerate(predictions):
        order = torch.argsort(expected[row], descending=True, stable=True)
        assert [name for name, _ in prediction.top] == [CLASSES[i] for i in order]
        np.testing.assert_allclose([p for _, p in prediction.top], expected[row, order].numpy(), rtol=1e-5)


def test_top_k_bounds(gray_project):
    root, _, files = gray_project
    predictor = load_predictor(root)
    (one,), _ = predictor.predict(files[:1], top_k=1)
    (everything,), _ = predictor.predict(files[:1], top_k=10)
    assert len(one.top) == 1 and one.top[0] == everything.top[0]
    assert len(everything.top) == len(CLASSES)
    assert sum(p for _, p in everything.top) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match=">= 1"):
        predictor.predict(files, top_k=0)


def test_colour_and_other_size_files_are_converted_like_the_data_layer(gray_project):
    root, _, _ = gray_project
    generator = torch.Generator().manual_seed(1)
    colour = save_png(root / "colour.png", random_pixels(1, 16, 3, generator)[0])
    (prediction,), errors = load_predictor(root).predict([colour])
    assert errors == {}
    # PIL's own grey conversion and bilinear resize to the prepared 8x8, then plain normalisation.
    with Image.open(colour) as im:
        grey = np.asarray(im.convert("RGB").resize((8, 8), Image.BILINEAR).convert("L"))[None, ..., None]
    expected = hand_probabilities(root, grey, [0.4], [0.3])[0]
    assert prediction.top[0][1] == pytest.approx(float(expected.max()), rel=1e-5)


def test_grey_file_for_a_colour_model_is_repeated_to_rgb(tmp_path):
    generator = torch.Generator().manual_seed(2)
    rgb = random_pixels(1, 8, 3, generator)
    write_prepared(tmp_path / "data/prepared", CLASSES, COUNTS, [0], images=rgb, mean=(0.5, 0.4, 0.3),
                   std=(0.2, 0.25, 0.3))
    build_model(tmp_path, 3, generator)
    grey = random_pixels(1, 8, 1, generator)
    (prediction,), _ = load_predictor(tmp_path).predict([save_png(tmp_path / "g.png", grey[0])], top_k=3)
    expected = hand_probabilities(tmp_path, np.repeat(grey, 3, axis=-1), [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])[0]
    np.testing.assert_allclose(sorted((p for _, p in prediction.top), reverse=True),
                               np.sort(expected.numpy())[::-1], rtol=1e-5)


def test_non_square_data_set_takes_only_its_own_size(tmp_path):
    generator = torch.Generator().manual_seed(4)
    wide = torch.randint(0, 256, (1, 6, 8, 1), generator=generator, dtype=torch.uint8).numpy()
    write_prepared(tmp_path / "data/prepared", CLASSES, COUNTS, [0], images=wide, mean=(0.4,), std=(0.3,))
    build_model(tmp_path, 1, generator)
    same = save_png(tmp_path / "same.png", wide[0])
    square = save_png(tmp_path / "square.png", random_pixels(1, 8, 1, generator)[0])
    predictions, errors = load_predictor(tmp_path).predict([same, square], top_k=3)
    assert [p.path for p in predictions] == [same] and list(errors) == [square]
    assert "8x8 but the model takes 8x6" in errors[square]
    expected = hand_probabilities(tmp_path, wide, [0.4], [0.3])[0]
    np.testing.assert_allclose([dict(predictions[0].top)[c] for c in CLASSES], expected.numpy(), rtol=1e-5)


def test_streamed_data_set_predicts_like_streamed_evaluation(tmp_path):
    generator = torch.Generator().manual_seed(3)
    files = [save_png(tmp_path / f"s{i}.png", random_pixels(1, 20, 3, generator)[0]) for i in range(2)]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    write_prepared(tmp_path / "data/prepared", CLASSES, COUNTS, [0, 1], test_ids=["../../s0.png", "../../s1.png"],
                   image_size=16, mean=mean, std=std)
    build_model(tmp_path, 3, generator)
    predictor = load_predictor(tmp_path)
    predictions, errors = predictor.predict(files, top_k=3)
    assert errors == {}
    test = load_prepared(tmp_path / "data/prepared").split("test")
    loader = BatchLoader(test, batch_size=4, mean=mean, std=std, train=False, image_size=16)
    with torch.no_grad():
        x, _ = next(loader.batches(torch.arange(2), 0))
        assert x.shape == (2, 3, 16, 16)
        expected = torch.softmax(predictor.head(predictor.backbone(x)).double(), 1)
    for row, prediction in enumerate(predictions):
        got = dict(prediction.top)
        np.testing.assert_allclose([got[c] for c in CLASSES], expected[row].numpy(), rtol=1e-5)


def test_bad_files_are_reported_and_the_others_predicted(gray_project, capsys):
    root, _, files = gray_project
    text = root / "notes.png"
    text.write_text("not an image")
    truncated = root / "truncated.png"
    truncated.write_bytes(Path(files[0]).read_bytes()[:30])
    missing = str(root / "missing.png")
    paths = [files[0], str(text), missing, str(truncated), str(root), files[1]]
    predictions, errors = load_predictor(root).predict(paths)
    assert [p.path for p in predictions] == [files[0], files[1]]
    assert set(errors) == {str(text), missing, str(truncated), str(root)}

    code = main(["predict", *paths, "--model-dir", str(root), "--top-k", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out.count(files[0]) == 1 and out.count(files[1]) == 1 and "missing.png" not in out
    assert len(err.strip().splitlines()) == 4 and all(line.startswith("error: ") for line in err.strip().splitlines())
    assert main(["predict", files[0], "--model-dir", str(root)]) == 0


def test_missing_artifacts_are_named(tmp_path, capsys):
    with pytest.raises(ConfigError, match="artifacts/stage1/model.json.*head.safetensors.*dvc repro"):
        load_predictor(tmp_path)
    assert main(["predict", "x.png", "--model-dir", str(tmp_path)]) == 1
    assert "dvc repro" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_on_the_pipeline_matches_its_test_logits(project, tmp_path):
    """PNGs of the first test images of the real pipeline get softmax of the stage-2 test logits it saved."""
    root, _ = project
    checkout_baseline(root)
    prepared = load_prepared(root / "data/prepared")
    pixels = prepared.split("test").images[:5].numpy()
    files = [save_png(tmp_path / f"t{i}.png", p) for i, p in enumerate(pixels)]
    out = run(["python", "-m", "ltpipe.cli", "predict", *files, "--top-k", "1"], root)
    logits = torch.from_numpy(np.load(root / "artifacts/stage2/logits_test.npy")[:5]).double()
    probs = torch.softmax(logits, 1)
    blocks = out.stdout.strip().split("\n")
    for i, path in enumerate(files):
        name, prob = blocks[2 * i + 1].split()
        assert blocks[2 * i] == path
        assert name == prepared.classes[int(probs[i].argmax())]
        assert float(prob) == pytest.approx(float(probs[i].max()), abs=1e-4)
    assert json.loads((root / "data/prepared/info.json").read_text())["in_memory"]
