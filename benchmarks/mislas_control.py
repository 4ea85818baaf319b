"""Control for the MiSLAS recipe: dvlab-research/MiSLAS's own two stages on the same data, outside ltpipe.

Is the gap between our `mislas` recipe and the published 82.1 in ltpipe's code or in the data? This script runs the
reference's CIFAR-10-LT IF=100 configs (config/cifar10/cifar10_imb001_stage1_mixup.yaml and
..._stage2_mislas.yaml) with the reference's own modules, loaded unmodified from a checkout given by --ref-repo:
models/resnet_cifar.py (resnet32_fe + Classifier), methods.py (mixup_data, mixup_criterion, LabelAwareSmoothing,
LearnableWeightScaling) and datasets/sampler.py (ClassAwareSampler).

Stage 1 (train_stage1.py): mixup (alpha 1) with plain cross-entropy, SGD 0.1 / momentum 0.9 / wd 2e-4 on backbone and
classifier, batch 128, 200 epochs, per-epoch lr: linear warm-up over 5 epochs, x0.1 after epoch 160, x0.01 after 180.
Stage 2 (train_stage2.py): starting from a stage-1 checkpoint (classifier included), backbone frozen in eval mode
(shift_bn False), class-aware sampling (4 images per class in a row), label-aware smoothing 0.3 (head) / 0.0 (tail),
a learnable per-class logit scale (LWS, lr x1) and the classifier (lr x0.5), cosine lr from 0.1 over 10 epochs of
ceil(N / 128) + 1 batches. Both evaluate on all 10,000 test images after every epoch, as the reference does.

The reference does not say which stage-1 checkpoint stage 2 starts from (its README passes "/path/to/checkpoint/
stage1"; both `current.pth.tar` and `model_best.pth.tar`, the best epoch on test, are written), so stage 2 runs from
both: the last stage-1 epoch and the best stage-1 epoch on test. Prints the last and best test top-1 of each.

Only the data source (the image folders of the shared JPEG copy instead of the pickled originals, the same
LT subset rule as benchmarks/reference_control.py) and the device (CPU: mixup's permutation stays on the CPU)
differ.

    git clone https://github.com/dvlab-research/MiSLAS /path/MiSLAS
    python benchmarks/mislas_control.py --ref-repo /path/MiSLAS --root /path/cifar10-jpg --out mislas_control.json

`--ltpipe-run DIR` instead of `--root` runs only the reference's stage 2, on the stage-1 model of an ltpipe pipeline
checkout of the `mislas` recipe, with that run's images, splits and normalisation (test: its test split), to tell
ltpipe's stage 2 from its stage 1. `--no-augment` feeds that stage 2 the unaugmented images (as ltpipe's cached
features are) to measure what the augmentation is worth.

Resumable: stage 1 writes a checkpoint after every epoch next to --out and picks it up when the same command runs
again; stage 2 (about a minute per start) reruns whole.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ltpipe.io import write_json
from ltpipe.train.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from reference_control import CLASSES, ArrayDataset, fast, git_commit, load_module, reference_data, reference_lr

STAGE2_EPOCHS = 10


def copy_state(module: torch.nn.Module) -> dict:
    # state_dict() shares storage with the live parameters, which the next epochs overwrite
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def evaluate(backbone, head, test, test_labels: np.ndarray) -> tuple[float, list[float]]:
    backbone.eval()
    with torch.no_grad():
        predicted = torch.cat([head(backbone(fast(x))).argmax(1) for x, _ in test]).numpy()
    per_class = [float((predicted[test_labels == c] == c).mean()) for c in range(len(CLASSES))]
    return float((predicted == test_labels).mean()), per_class


def reference_model(ref, states: dict | None = None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The reference's (resnet32_fe, Classifier), with the given state dicts ("backbone", "classifier") if any."""
    backbone, classifier = ref.resnet.resnet32_fe(), ref.resnet.Classifier(feat_in=64, num_classes=len(CLASSES))
    if states is not None:
        backbone.load_state_dict(states["backbone"])
        classifier.load_state_dict(states["classifier"])
    return backbone, classifier


def stage2(ref, backbone, classifier, train_set, counts, test, test_labels, seed: int) -> dict:
    """train_stage2.py for CIFAR-10 (shift_bn False, mixup False) on copies of the given stage-1 modules."""
    torch.manual_seed(seed)
    random.seed(seed)  # the reference's ClassAwareSampler shuffles with `random`
    backbone, classifier = copy.deepcopy(backbone), copy.deepcopy(classifier)
    lws = ref.methods.LearnableWeightScaling(num_classes=len(CLASSES))
    loader = torch.utils.data.DataLoader(train_set, batch_size=128, shuffle=False,
                                         sampler=ref.sampler.ClassAwareSampler(train_set))
    criterion = ref.methods.LabelAwareSmoothing(cls_num_list=counts, smooth_head=0.3, smooth_tail=0.0)
    optimizer = torch.optim.SGD([{"params": classifier.parameters()}, {"params": lws.parameters()}], 0.1,
                                momentum=0.9, weight_decay=2e-4)
    end_steps = int(np.ceil(len(train_set) / 128))
    head = torch.nn.Sequential(classifier, lws)
    history = []
    for epoch in range(STAGE2_EPOCHS):
        lr = 0.5 * 0.1 * (1 + np.cos(epoch / STAGE2_EPOCHS * 3.1415926535))
        optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"] = 0.5 * lr, lr
        backbone.eval()
        head.train()
        for i, (x, y) in enumerate(loader):
            if i > end_steps:
                break
            with torch.no_grad():
                feat = backbone(fast(x))
            loss = criterion(head(feat), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        head.eval()
        accuracy, per_class = evaluate(backbone, head, test, test_labels)
        history.append(accuracy)
        print(f"  stage 2 epoch {epoch + 1}/{STAGE2_EPOCHS} lr {lr:.5f} test {100 * accuracy:.2f}", flush=True)
    return dict(last=history[-1], best=max(history), best_epoch=int(np.argmax(history)) + 1,
                per_class_last=per_class, history=history)


def on_ltpipe_stage1(ref, args) -> dict:
    """The reference's stage 2 on the stage-1 model of an ltpipe pipeline checkout (the `mislas` recipe), with that
    run's prepared images, splits and normalisation: isolates ltpipe's stage 2 from its stage 1."""
    import torchvision.transforms as transforms

    from ltpipe.data.prepared import load_prepared
    from ltpipe.models import load_classifier

    prepared = load_prepared(args.ltpipe_run / "data/prepared")
    train, test = prepared.split("train"), prepared.split("test")
    if train.images is None:
        sys.exit(f"{args.ltpipe_run}: needs small images decoded by prepare (dataset.in_memory_max_size)")
    model = load_classifier(args.ltpipe_run / "artifacts/stage1")
    normalize = transforms.Normalize(prepared.info["mean"], prepared.info["std"])
    test_tf = transforms.Compose([transforms.ToTensor(), normalize])
    train_tf = test_tf if args.no_augment else transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])
    labels, test_labels = train.labels.numpy(), test.labels.numpy()
    train_set = ArrayDataset(train.images.numpy(), labels, train_tf)
    train_set.targets = labels.tolist()  # what the reference's ClassAwareSampler reads
    test_loader = torch.utils.data.DataLoader(ArrayDataset(test.images.numpy(), test_labels, test_tf),
                                              batch_size=128, num_workers=args.workers)
    counts = np.bincount(labels, minlength=len(CLASSES)).tolist()
    print(f"ltpipe stage 1 of {args.ltpipe_run}; class counts {counts}; test {len(test_labels)}", flush=True)
    start = time.perf_counter()
    result = stage2(ref, model.backbone, model.head, train_set, counts, test_loader, test_labels, args.seed)
    return dict(ltpipe_run=str(args.ltpipe_run), augment=not args.no_augment, stage2=result,
                stage2_wall_s=round(time.perf_counter() - start))


def reference_two_stages(ref, args) -> dict:
    if not (args.root / "train").is_dir() or not (args.root / "test").is_dir():
        sys.exit(f"--root {args.root} has no train/ and test/ folders (the unpacked cifar10-jpg)")
    (images, labels, counts, train_tf), (test_images, test_labels, test_tf) = reference_data(args.root)
    train_set = ArrayDataset(images, labels, train_tf)
    train_set.targets = labels.tolist()  # what the reference's ClassAwareSampler reads
    test = torch.utils.data.DataLoader(ArrayDataset(test_images, test_labels, test_tf), batch_size=128,
                                       num_workers=args.workers)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # mixup's lambda comes from np.random
    train = torch.utils.data.DataLoader(train_set, batch_size=128, shuffle=True, num_workers=args.workers)
    backbone, classifier = reference_model(ref)
    optimizer = torch.optim.SGD([{"params": backbone.parameters()}, {"params": classifier.parameters()}], 0.1,
                                momentum=0.9, weight_decay=2e-4)
    criterion = torch.nn.CrossEntropyLoss()

    checkpoint = args.out.with_suffix(".ckpt")
    run_id = fingerprint(dict(epochs=args.epochs, seed=args.seed, recipe="mislas"), [])
    state = dict(epoch=0, history=[], wall_s=0.0)
    best = None
    saved = load_checkpoint(checkpoint, run_id)
    if saved is not None:
        backbone.load_state_dict(saved["backbone"])
        classifier.load_state_dict(saved["classifier"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        np.random.set_state(saved["np_rng"])
        state, best = saved["state"], saved["best"]
        print(f"resuming after epoch {state['epoch']}/{args.epochs}", flush=True)
    print(f"class counts {counts} ({len(labels)} images); test {len(test_labels)}", flush=True)
    for epoch in range(state["epoch"], args.epochs):
        start = time.perf_counter()
        # train_stage1.py's schedule is cifar_train.py's with decays x0.1 / x0.01 instead of x0.01 / x0.0001
        lr = reference_lr(epoch, args.epochs, decays=(0.1, 0.01))
        for group in optimizer.param_groups:
            group["lr"] = lr
        backbone.train()
        classifier.train()
        for x, y in train:
            x, y_a, y_b, lam = ref.methods.mixup_data(x, y, alpha=1.0, use_cuda=False)
            loss = ref.methods.mixup_criterion(criterion, classifier(backbone(fast(x))), y_a, y_b, lam)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        classifier.eval()
        accuracy, per_class = evaluate(backbone, classifier, test, test_labels)
        if not state["history"] or accuracy > max(state["history"]):
            best = dict(epoch=epoch + 1, backbone=copy_state(backbone), classifier=copy_state(classifier))
        state["history"].append(accuracy)
        state["per_class_last"] = per_class
        state["epoch"], state["wall_s"] = epoch + 1, state["wall_s"] + time.perf_counter() - start
        save_checkpoint(checkpoint, dict(backbone=backbone.state_dict(), classifier=classifier.state_dict(),
                                         optimizer=optimizer.state_dict(), rng=torch.get_rng_state(),
                                         np_rng=np.random.get_state(), state=state, best=best,
                                         fingerprint=run_id))
        print(f"epoch {epoch + 1}/{args.epochs} lr {lr:.5f} loss {loss.item():.3f} test {100 * accuracy:.2f} "
              f"best {100 * max(state['history']):.2f} ({state['wall_s']:.0f} s)", flush=True)

    start = time.perf_counter()
    print("stage 2 from the last stage-1 epoch", flush=True)
    from_last = stage2(ref, backbone, classifier, train_set, counts, test, test_labels, args.seed)
    print(f"stage 2 from the best stage-1 epoch on test ({best['epoch']})", flush=True)
    from_best = stage2(ref, *reference_model(ref, best), train_set, counts, test, test_labels, args.seed)
    return dict(epochs=args.epochs,
                stage1=dict(last=state["history"][-1], best=max(state["history"]), best_epoch=best["epoch"],
                            per_class_last=state["per_class_last"], wall_s=round(state["wall_s"]),
                            history=state["history"]),
                stage2_from_last=from_last, stage2_from_best=from_best,
                stage2_wall_s=round(time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref-repo", type=Path, required=True, help="a checkout of dvlab-research/MiSLAS")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--root", type=Path, help="the unpacked cifar10-jpg folder: run both reference stages")
    source.add_argument("--ltpipe-run", type=Path, help="a pipeline checkout after `dvc repro` of the mislas recipe: "
                                                        "run the reference's stage 2 on its stage 1")
    parser.add_argument("--no-augment", action="store_true",
                        help="with --ltpipe-run: stage 2 on unaugmented images (no pad-4 crop, no flip)")
    parser.add_argument("--epochs", type=int, default=200, help="stage-1 epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("mislas_control.json"))
    args = parser.parse_args()
    needed = ["models/resnet_cifar.py", "methods.py", "datasets/sampler.py"]
    missing = [name for name in needed if not (args.ref_repo / name).is_file()]
    if missing:
        sys.exit(f"{args.ref_repo} is not a dvlab-research/MiSLAS checkout (missing {', '.join(missing)})")
    if args.no_augment and not args.ltpipe_run:
        sys.exit("--no-augment applies to --ltpipe-run only (the reference's own two stages keep its augmentation)")
    if args.epochs < 10:
        sys.exit(f"--epochs must be >= 10 (5 warm-up epochs, then the two decays), got {args.epochs}")
    ref = argparse.Namespace(resnet=load_module(args.ref_repo / "models/resnet_cifar.py"),
                             methods=load_module(args.ref_repo / "methods.py"),
                             sampler=load_module(args.ref_repo / "datasets/sampler.py"))
    ref_commit = git_commit(args.ref_repo)
    runs = on_ltpipe_stage1(ref, args) if args.ltpipe_run else reference_two_stages(ref, args)
    result = dict(command=" ".join([Path(sys.executable).name] + sys.argv), reference_commit=ref_commit,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  machine=f"{platform.platform()} | {os.cpu_count()} CPUs", torch=torch.__version__,
                  seed=args.seed, **runs)
    write_json(args.out, result)
    print(json.dumps({k: {n: x for n, x in v.items() if n != "history"} if isinstance(v, dict) else v
                      for k, v in result.items()}), flush=True)


if __name__ == "__main__":
    main()
