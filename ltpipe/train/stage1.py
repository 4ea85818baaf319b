"""Stage 1: instance-balanced (or any sampler) training of backbone + linear classifier, resumable per epoch, on the
runtime's device and precision, in one process or many (torchrun DDP: rank r trains on its share of every global
batch; only rank 0 writes checkpoints, logs and outputs).

The task comes from the prepared data (`ltpipe.tasks`): the loss gets its label format (class indices or multi-hot
targets). Per epoch it logs train/loss, train/acc and train/lr, and on the validation split the task's `val_metrics`
of the class probabilities (softmax or sigmoid): val/acc, the fraction of images whose top-scoring class is one of
their labels (top-1 accuracy; precision@1 for multi-label data), val/map, the mean per-class AP, and for one label
per image val/balanced_acc, the mean per-class recall."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

import torch
from tqdm import tqdm

from ltpipe.data.augment import build_augment
from ltpipe.data.loader import BatchLoader
from ltpipe.data.prepared import load_prepared
from ltpipe.losses import build_loss
from ltpipe.mixing import build_mixer
from ltpipe.io import write_json
from ltpipe.models import Classifier, save_classifier
from ltpipe.models.freeze import freeze_stages
from ltpipe.models.pretrained import load_pretrained
from ltpipe.multilabel.metrics import VALIDATION_METRICS
from ltpipe.runtime import Runtime, under_torchrun
from ltpipe.samplers import build_sampler
from ltpipe.schema import as_params
from ltpipe.train.checkpoint import checkpoint_path, fingerprint, load_checkpoint, save_checkpoint
from ltpipe.train.optim import build_optimizer
from ltpipe.train.schedule import build_scheduler

# The sections a stage-1 result depends on (the run fingerprint hashes them); runtime.device and the number of
# processes are left out on purpose, so a run interrupted on one GPU count can resume on another.
STAGE1_PARAMS = ("seed", "loss", "losses", "model", "train", "optimizers", "samplers", "mixers")


def epoch_seed(seed: int, epoch: int) -> int:
    """One seed per (run seed, epoch): resuming at any epoch redraws exactly what an uninterrupted run draws."""
    return seed * 1_000_003 + epoch


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, loader: BatchLoader, n: int, runtime: Runtime) -> torch.Tensor:
    model.eval()
    with runtime.autocast():
        return torch.cat([model(x).float() for x, _ in loader.batches(torch.arange(n), seed=0)])


def train_backbone(params, prepared_dir, out_dir, live_dir, resume_dir=None) -> None:
    """Train, log per-epoch curves with DVCLive, checkpoint every epoch, and write the final model to `out_dir`.

    `params`: the validated Params (or a mapping, validated here). The checkpoint lives in `resume_dir` (default:
    `ltpipe.train.checkpoint.resume_dir()`) under the run's fingerprint, and is deleted when the run finishes.
    Under torchrun every process calls this; the process group is joined here.
    """
    params = as_params(params)
    runtime = Runtime.from_params(params.runtime, distributed=under_torchrun())
    try:
        _train(params, runtime, prepared_dir, out_dir, live_dir, resume_dir)
    finally:
        runtime.close()


def _train(params, runtime: Runtime, prepared_dir, out_dir, live_dir, resume_dir) -> None:
    from dvclive import Live

    cfg, seed = params.train, params.seed
    prepared = load_prepared(prepared_dir)
    train, val = prepared.split("train"), prepared.split("val")
    counts, num_classes, task = prepared.class_counts, len(prepared.classes), prepared.task

    # Everything that can reject params is built before the model trains one step.
    loss_fn = build_loss(params.loss, counts, len(train), **params.loss_kwargs()).to(runtime.device)
    sampler = build_sampler(cfg.sampler, train.labels, num_classes, **params.sampler_kwargs())
    mixer = build_mixer(cfg.mixer, counts, **params.mixer_kwargs())
    loader_kw = dict(mean=prepared.info["mean"], std=prepared.info["std"], image_size=prepared.info.get("image_size"),
                     num_workers=cfg.num_workers, channels_last=cfg.channels_last, device=runtime.device)
    train_loader = BatchLoader(train, batch_size=cfg.batch_size, train=True, augment=build_augment(cfg.augment),
                               **loader_kw)
    val_loader = BatchLoader(val, batch_size=cfg.eval_batch_size, train=False, **loader_kw)

    torch.manual_seed(seed)
    model = Classifier(params.model.backbone, num_classes, int(prepared.info["channels"]), head=params.model.head,
                       head_kwargs=params.head_kwargs(), initial_bias=loss_fn.initial_bias,
                       cosine_scale=loss_fn.cosine_scale)
    pretrained = None
    if params.model.pretrained is not None:
        pretrained = load_pretrained(params.model.pretrained, model.backbone, model.head)
        if runtime.is_main:
            print(f"pretrained weights: {pretrained.summary()}")
    frozen = freeze_stages(model.backbone, params.model.freeze_stages)
    model = model.to(runtime.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    epochs = cfg.epochs
    steps_per_epoch = math.ceil(len(sampler) / cfg.batch_size)
    optimizer = build_optimizer(model, name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                momentum=cfg.momentum, layer_decay=cfg.layer_decay, opt_kwargs=params.optimizer_kwargs())
    scheduler = build_scheduler(optimizer, steps_per_epoch=steps_per_epoch, epochs=epochs,
                                warmup_epochs=cfg.warmup_epochs, schedule=cfg.schedule, milestones=list(cfg.milestones),
                                gamma=cfg.gamma)
    scaler = runtime.grad_scaler()

    inputs = [p for p in Path(prepared_dir).iterdir() if p.is_file()]
    run_id = fingerprint(params.section(*STAGE1_PARAMS), inputs + ([Path(params.model.pretrained)] if pretrained else []))
    history: List[Dict[str, float]] = []
    start_epoch = 0
    best = BestEpoch(f"val/{task.epoch_metric}") if cfg.select == "best_val" else None
    ckpt = checkpoint_path(run_id, resume_dir)
    state = load_checkpoint(ckpt, run_id)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        history, start_epoch = state["history"], state["epoch"]
        if best is not None:
            best.load_state_dict(state["best"])
        if runtime.is_main:
            print(f"resuming stage 1 from epoch {start_epoch}/{epochs} ({ckpt})")
    trained = runtime.wrap_for_training(model)
    if params.model.freeze_stages >= 0:
        # SyncBatchNorm conversion replaces BatchNorm modules: pin the frozen ones to eval mode again.
        freeze_stages(model.backbone, params.model.freeze_stages)

    # DVC deletes the stage's outputs before running it, so a resumed run replays the saved history into a new log.
    live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None) if runtime.is_main else None
    for row in history if live is not None else ():
        _log_epoch(live, row)

    val_targets = task.multi_hot(val.labels, num_classes).numpy()
    for epoch in range(start_epoch, epochs):
        row = _train_one_epoch(trained, train_loader, sampler, mixer, loss_fn, optimizer, scheduler, scaler, runtime,
                               epoch, epochs, seed, task)
        # Every rank evaluates the same validation set (small) rather than waiting on rank 0.
        val_logits = predict_logits(model, val_loader, len(val), runtime).cpu()
        probabilities = task.probabilities(val_logits.double()).numpy()
        for name in task.val_metrics:
            row[f"val/{name}"] = VALIDATION_METRICS[name](probabilities, val_targets)
        history.append(row)
        if runtime.is_main:
            _log_epoch(live, row)
            if best is not None:
                best.update(epoch + 1, row, model)
            save_checkpoint(ckpt, dict(fingerprint=run_id, epoch=epoch + 1, history=history, model=model.state_dict(),
                                       optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                       scaler=scaler.state_dict(), torch_rng=torch.get_rng_state(),
                                       best=best.state_dict() if best is not None else None))
        runtime.barrier()
    if runtime.is_main:
        live.summary["selected_epoch"] = best.epoch if best is not None else epochs
        live.end()
        if best is not None:
            model.load_state_dict(best.weights)
        save_classifier(out_dir, model.to(memory_format=torch.contiguous_format))
        # What the starting point was: the pretrained file's loaded / dropped / missing keys and the frozen tensors.
        write_json(Path(out_dir) / "init.json", {"pretrained": pretrained.to_dict() if pretrained else None,
                                                 "frozen": frozen})
        ckpt.unlink(missing_ok=True)
    runtime.barrier()


class BestEpoch:
    """The weights of the epoch with the highest `metric` so far (ties keep the earlier epoch), kept on the CPU.

    Model selection by validation metric, as classifier-balancing's training loop keeps its best-val model; the
    CIFAR-LT papers' "best" numbers pick the epoch on the test set, which ltpipe never sees during training.
    """

    def __init__(self, metric: str):
        self.metric, self.epoch, self.value, self.weights = metric, 0, -math.inf, None

    def update(self, epoch: int, row: Dict[str, float], model: torch.nn.Module) -> None:
        if row[self.metric] > self.value:
            self.epoch, self.value = epoch, row[self.metric]
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def state_dict(self) -> Dict:
        return {"epoch": self.epoch, "value": self.value, "weights": self.weights}

    def load_state_dict(self, state: Dict) -> None:
        self.epoch, self.value, self.weights = state["epoch"], state["value"], state["weights"]


def _train_one_epoch(model, loader, sampler, mixer, loss_fn, optimizer, scheduler, scaler, runtime: Runtime,
                     epoch, epochs, seed, task):
    model.train()
    loss_fn.set_epoch(epoch, epochs)
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    indices = sampler.epoch_indices(epoch, epochs, seed)  # one global order, the same on every rank
    lr = optimizer.param_groups[0]["lr"]
    totals = torch.zeros(3, dtype=torch.float64, device=runtime.device)  # loss sum, correct, seen
    batches = loader.batches(indices, seed=epoch_seed(seed, epoch), shard=runtime.shard)
    bar = tqdm(batches, total=math.ceil(len(indices) / loader.batch_size), desc=f"stage 1 epoch {epoch + 1}/{epochs}",
               leave=False, disable=not runtime.is_main)
    for step, (x, y) in enumerate(bar):
        x, y_a, y_b, lam = mixer(x, y, generator)
        with runtime.autocast():
            logits, features = model(x, return_features=True)
        logits = logits.float()
        batch = (logits, y_a, y_b, lam) + ((features.float(),) if loss_fn.needs_features else ())
        all_logits, all_y_a, all_y_b, all_lam, *all_features = runtime.global_batch(*batch)
        batch_loss = loss_fn(all_logits, all_y_a, all_features[0] if all_features else None, all_y_b, all_lam)
        loss = batch_loss * runtime.world_size  # DDP averages the ranks' gradients of the same global loss
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        with torch.no_grad():
            pred = logits.argmax(1)
            correct = (lam * task.top1_hits(pred, y_a) + (1 - lam) * task.top1_hits(pred, y_b)).sum()
            totals += torch.stack([batch_loss.detach().double() * len(y), correct.double(),
                                   torch.tensor(float(len(y)), dtype=torch.float64, device=runtime.device)])
        if runtime.is_main and step % 20 == 0:  # .item() waits for the device: not every step
            bar.set_postfix(loss=f"{totals[0].item() / totals[2].item():.3f}")
    loss_sum, correct, seen = runtime.all_sum(totals).tolist()
    return {"train/loss": loss_sum / seen, "train/acc": correct / seen, "train/lr": lr}


def _log_epoch(live, row: Dict[str, float]) -> None:
    for name, value in row.items():
        live.log_metric(name, round(float(value), 6))
    live.next_step()
