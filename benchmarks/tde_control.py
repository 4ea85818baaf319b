"""Control for the `tde` recipe: the causal-TDE authors' CIFAR-10-LT training on the same data, outside ltpipe.

Is a gap between our `tde` recipe and the published 80.6 (De-confound-TDE) / 71.7 (De-confound) in ltpipe's code or
in the data? This script runs KaihuaTang/Long-Tailed-Recognition.pytorch's config/CIFAR10_LT/causal_norm_32.yaml with
the reference's own modules, loaded unmodified from the `classification` folder of a checkout given by --ref-repo:
models/ResNet32Feature.py (BBN's two-branch ResNet-32, 128 features), models/CausalNormClassifier.py (2 heads, tau
16, gamma 1/32, alpha 1.0) and utils.py (WarmupMultiStepLR), in the loop of run_networks.py: one SGD per network
(lr 0.2, momentum 0.9, weight decay 5e-4), each with WarmupMultiStepLR([120, 160], gamma 0.01, 5 warm-up epochs)
stepped before every epoch, batch 256 shuffled, plain cross-entropy, the feature mean d <- 0.9 d + mean_batch(x)
after every training forward, 200 epochs. After every epoch (every --eval-every-th before the last lr decay) both
heads' predictions on all 10,000 test images: the TDE inference (alpha 1.0) and the plain causal head (alpha 0, their
"De-confound"); the authors keep the last epoch for CIFAR ("CIFARs don't have val set, so use the latest model").

Only the data source (the image folders of the shared JPEG copy instead of the pickled originals, the LT subset rule
and the pad-4 crop + flip + normalisation of benchmarks/reference_control.py, which are the ones the TDE code took
from BBN) and the device (CPU; the classifier's `.cuda()` is a no-op without CUDA) differ.

    git clone https://github.com/KaihuaTang/Long-Tailed-Recognition.pytorch /path/TDE
    python benchmarks/tde_control.py --ref-repo /path/TDE/classification --root /path/cifar10-jpg --out tde.json

Resumable: a checkpoint is written after every epoch next to --out and picked up when the same command (same
--epochs and --seed) runs again.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from ltpipe.io import write_json
from ltpipe.train.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from reference_control import CLASSES, best, fast, git_commit, load_module, reference_loaders

ALPHAS = {"tde": 1.0, "none": 0.0}  # TDE inference; the plain causal head


def load_reference(ref_repo: Path) -> argparse.Namespace:
    # The reference files `from utils import *`; its utils imports matplotlib for plots this control never draws.
    sys.path.insert(0, str(ref_repo))
    for name in ("matplotlib", "matplotlib.pyplot"):
        sys.modules.setdefault(name, types.ModuleType(name))
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # Causal_Norm_Classifier allocates its weight .cuda()
    return argparse.Namespace(resnet=load_module(ref_repo / "models/ResNet32Feature.py"),
                              causal=load_module(ref_repo / "models/CausalNormClassifier.py"),
                              utils=load_module(ref_repo / "utils.py"))


def evaluate(backbone, classifier, embed: np.ndarray, test, test_labels: np.ndarray) -> dict:
    """Test top-1 and per-class recall of the TDE and the plain head, from one pass of the backbone."""
    backbone.eval()
    classifier.eval()
    predicted = {name: [] for name in ALPHAS}
    with torch.no_grad():
        for x, _ in test:
            features = backbone(fast(x))
            for name, alpha in ALPHAS.items():
                classifier.alpha = alpha
                predicted[name].append(classifier(features, None, embed)[0].argmax(1))
    classifier.alpha = ALPHAS["tde"]
    result = {}
    for name, parts in predicted.items():
        p = torch.cat(parts).numpy()
        result[name] = (float((p == test_labels).mean()),
                        [float((p[test_labels == c] == c).mean()) for c in range(len(CLASSES))])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref-repo", type=Path, required=True,
                        help="the classification folder of a KaihuaTang/Long-Tailed-Recognition.pytorch checkout")
    parser.add_argument("--root", type=Path, required=True, help="the unpacked cifar10-jpg folder")
    parser.add_argument("--epochs", type=int, default=200, help="milestones stay at 60%% / 80%% (120 / 160 of 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=1,
                        help="test every K-th epoch before the last lr decay (every epoch after it, where the last and "
                             "the best epochs lie)")
    parser.add_argument("--out", type=Path, default=Path("tde_control.json"))
    args = parser.parse_args()
    needed = ["models/ResNet32Feature.py", "models/CausalNormClassifier.py", "utils.py"]
    missing = [name for name in needed if not (args.ref_repo / name).is_file()]
    if missing:
        sys.exit(f"{args.ref_repo} is not the classification folder of a KaihuaTang/Long-Tailed-Recognition.pytorch "
                 f"checkout (missing {', '.join(missing)})")
    if args.eval_every < 1:
        sys.exit(f"--eval-every must be >= 1, got {args.eval_every}")
    if args.epochs < 10:
        sys.exit(f"--epochs must be >= 10 (5 warm-up epochs, then the two decays), got {args.epochs}")
    ref = load_reference(args.ref_repo)
    ref_commit = git_commit(args.ref_repo)
    torch.manual_seed(args.seed)
    train, test, counts, test_labels = reference_loaders(args.root, batch_size=256, test_batch_size=256,
                                                         workers=args.workers)
    networks = dict(feat_model=ref.resnet.create_model().to(memory_format=torch.channels_last),
                    classifier=ref.causal.create_model(128, num_classes=len(CLASSES), use_effect=True, num_head=2,
                                                       tau=16.0, alpha=ALPHAS["tde"], gamma=0.03125))
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
                  for k, m in networks.items()}
    milestones = [int(0.6 * args.epochs), int(0.8 * args.epochs)]
    schedulers = {k: ref.utils.WarmupMultiStepLR(o, milestones, gamma=0.01, warmup_epochs=5)
                  for k, o in optimizers.items()}
    criterion = torch.nn.CrossEntropyLoss()

    checkpoint, run_id = args.out.with_suffix(".ckpt"), fingerprint(dict(epochs=args.epochs, seed=args.seed), [])
    state = dict(epoch=0, history={name: [] for name in ALPHAS}, wall_s=0.0,
                 embed=np.zeros(128, dtype=np.float32))
    saved = load_checkpoint(checkpoint, run_id)
    if saved is not None:
        for k in networks:
            networks[k].load_state_dict(saved["networks"][k])
            optimizers[k].load_state_dict(saved["optimizers"][k])
            schedulers[k].load_state_dict(saved["schedulers"][k])
        torch.set_rng_state(saved["rng"])
        state = saved["state"]
        print(f"resuming after epoch {state['epoch']}/{args.epochs}", flush=True)
    print(f"class counts {counts} ({sum(counts)} images); test {len(test_labels)}", flush=True)
    backbone, classifier = networks["feat_model"], networks["classifier"]
    for epoch in range(state["epoch"], args.epochs):
        start = time.perf_counter()
        for scheduler in schedulers.values():
            scheduler.step()
        backbone.train()
        classifier.train()
        for x, y in train:
            features = backbone(fast(x))
            state["embed"] = 0.9 * state["embed"] + features.detach().mean(0).view(-1).numpy()
            loss = criterion(classifier(features, y, state["embed"])[0], y)
            for optimizer in optimizers.values():
                optimizer.zero_grad()
            loss.backward()
            for optimizer in optimizers.values():
                optimizer.step()
        tested = (epoch + 1) % args.eval_every == 0 or epoch >= milestones[-1]
        results = evaluate(backbone, classifier, state["embed"], test, test_labels) if tested else {}
        for name in ALPHAS:
            accuracy, per_class = results.get(name, (None, None))
            state["history"][name].append(accuracy)  # None: not tested after this epoch
            if tested:
                state[f"per_class_last_{name}"] = per_class
        state["epoch"], state["wall_s"] = epoch + 1, state["wall_s"] + time.perf_counter() - start
        save_checkpoint(checkpoint, dict(networks={k: m.state_dict() for k, m in networks.items()},
                                         optimizers={k: o.state_dict() for k, o in optimizers.items()},
                                         schedulers={k: s.state_dict() for k, s in schedulers.items()},
                                         rng=torch.get_rng_state(), state=state, fingerprint=run_id))
        lr = optimizers["feat_model"].param_groups[0]["lr"]
        print(f"epoch {epoch + 1}/{args.epochs} lr {lr:.5f} loss {loss.item():.3f} "
              + " ".join(f"{name} {100 * results[name][0]:.2f}" for name in results)
              + f" ({state['wall_s']:.0f} s)", flush=True)
    history = state["history"]
    result = dict(command=" ".join([Path(sys.executable).name] + sys.argv), reference_commit=ref_commit,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  machine=f"{platform.platform()} | {os.cpu_count()} CPUs", torch=torch.__version__,
                  epochs=args.epochs, seed=args.seed, wall_s=round(state["wall_s"]),
                  eval_every=args.eval_every,
                  **{name: dict(last=h[-1], best=best(h), best_epoch=h.index(best(h)) + 1,
                                per_class_last=state[f"per_class_last_{name}"], history=h)
                     for name, h in history.items()})
    write_json(args.out, result)
    print(json.dumps({k: {n: x for n, x in v.items() if n != "history"} if isinstance(v, dict) else v
                      for k, v in result.items()}), flush=True)


if __name__ == "__main__":
    main()
