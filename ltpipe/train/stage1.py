"""Stage 1: instance-balanced (or any sampler) training of backbone + linear classifier, resumable per epoch."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List

import torch
from tqdm import tqdm

from ltpipe.data.loader import BatchLoader
from ltpipe.data.prepared import load_prepared
from ltpipe.losses import build_loss
from ltpipe.mixing import build_mixer
from ltpipe.models import Classifier, save_classifier
from ltpipe.registry import named_kwargs
from ltpipe.samplers import build_sampler
from ltpipe.train.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from ltpipe.train.schedule import build_sgd

STAGE1_PARAMS = ("seed", "loss", "losses", "model", "train", "samplers", "mixers")


def epoch_seed(seed: int, epoch: int) -> int:
    """One seed per (run seed, epoch): resuming at any epoch redraws exactly what an uninterrupted run draws."""
    return seed * 1_000_003 + epoch


@torch.no_grad()
def predict_logits(model: torch.nn.Module, loader: BatchLoader, n: int) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x) for x, _ in loader.batches(torch.arange(n), seed=0)])


def train_backbone(params: Dict[str, Any], prepared_dir, out_dir, live_dir, checkpoint_path) -> None:
    """Train, log per-epoch curves with DVCLive, checkpoint every epoch, and write the final model to `out_dir`."""
    from dvclive import Live

    cfg, seed = params["train"], int(params["seed"])
    prepared = load_prepared(prepared_dir)
    train, val = prepared.split("train"), prepared.split("val")
    counts, num_classes = prepared.class_counts, len(prepared.classes)

    # Everything that can reject params is built before the model trains one step.
    loss_fn = build_loss(params["loss"], counts, **named_kwargs(params.get("losses"), params["loss"], "losses"))
    sampler = build_sampler(cfg["sampler"], train.labels, num_classes, **named_kwargs(params.get("samplers"), cfg["sampler"], "samplers"))
    mixer = build_mixer(cfg["mixer"], counts, **named_kwargs(params.get("mixers"), cfg["mixer"], "mixers"))
    loader_kw = dict(mean=prepared.info["mean"], std=prepared.info["std"], image_size=prepared.info.get("image_size"),
                     num_workers=int(cfg.get("num_workers", 0)), channels_last=bool(cfg.get("channels_last", False)))
    train_loader = BatchLoader(train, batch_size=int(cfg["batch_size"]), train=True, augment=cfg.get("augment") or {},
                               **loader_kw)
    val_loader = BatchLoader(val, batch_size=int(cfg.get("eval_batch_size", 256)), train=False, augment={},
                             **loader_kw)

    torch.manual_seed(seed)
    model = Classifier(params["model"]["backbone"], num_classes, int(prepared.info["channels"]),
                       cosine=loss_fn.needs_normed_classifier, initial_bias=loss_fn.initial_bias)
    if loader_kw["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    epochs = int(cfg["epochs"])
    steps_per_epoch = math.ceil(len(train.labels) / int(cfg["batch_size"]))
    optimizer, scheduler = build_sgd(
        model.parameters(), lr=float(cfg["lr"]), momentum=float(cfg["momentum"]),
        weight_decay=float(cfg["weight_decay"]), nesterov=bool(cfg.get("nesterov", False)),
        steps_per_epoch=steps_per_epoch, epochs=epochs, warmup_epochs=int(cfg["warmup_epochs"]),
        schedule=cfg["schedule"], milestones=list(cfg.get("milestones") or []), gamma=float(cfg.get("gamma", 0.1)))

    run_id = fingerprint({k: params.get(k) for k in STAGE1_PARAMS},
                         [p for p in Path(prepared_dir).iterdir() if p.is_file()])
    history: List[Dict[str, float]] = []
    start_epoch = 0
    state = load_checkpoint(checkpoint_path, run_id)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        history, start_epoch = state["history"], state["epoch"]
        print(f"resuming stage 1 from epoch {start_epoch}/{epochs} ({checkpoint_path})")

    # DVC deletes the stage's outputs before running it, so a resumed run replays the saved history into a new log.
    live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    for row in history:
        _log_epoch(live, row)

    for epoch in range(start_epoch, epochs):
        row = _train_one_epoch(model, train_loader, sampler, mixer, loss_fn, optimizer, scheduler, epoch, epochs, seed)
        val_pred = predict_logits(model, val_loader, len(val.labels)).argmax(1)
        row["val/acc"] = (val_pred == val.labels).float().mean().item()
        history.append(row)
        _log_epoch(live, row)
        save_checkpoint(checkpoint_path, dict(fingerprint=run_id, epoch=epoch + 1, history=history,
                                              model=model.state_dict(), optimizer=optimizer.state_dict(),
                                              scheduler=scheduler.state_dict(), torch_rng=torch.get_rng_state()))
    live.end()
    save_classifier(out_dir, model.to(memory_format=torch.contiguous_format))
    Path(checkpoint_path).unlink(missing_ok=True)


def _train_one_epoch(model, loader, sampler, mixer, loss_fn, optimizer, scheduler, epoch, epochs, seed):
    model.train()
    loss_fn.set_epoch(epoch, epochs)
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    indices = sampler.epoch_indices(epoch, epochs, seed)
    lr = optimizer.param_groups[0]["lr"]
    total_loss = total_correct = total_seen = 0.0
    bar = tqdm(loader.batches(indices, seed=epoch_seed(seed, epoch)), total=math.ceil(len(indices) / loader.batch_size),
               desc=f"stage 1 epoch {epoch + 1}/{epochs}", leave=False)
    for x, y in bar:
        x, y_a, y_b, lam = mixer(x, y, generator)
        features = model.backbone(x)
        logits = model.head(features)
        loss = loss_fn(logits, y_a, features if loss_fn.needs_features else None, y_b, lam)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            pred = logits.argmax(1)
            total_correct += (lam * (pred == y_a) + (1 - lam) * (pred == y_b)).sum().item()
            total_loss += loss.item() * len(y)
            total_seen += len(y)
        bar.set_postfix(loss=f"{total_loss / total_seen:.3f}")
    return {"train/loss": total_loss / total_seen, "train/acc": total_correct / total_seen, "train/lr": lr}


def _log_epoch(live, row: Dict[str, float]) -> None:
    for name, value in row.items():
        live.log_metric(name, round(float(value), 6))
    live.next_step()
