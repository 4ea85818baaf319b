"""Stage 2 driver: load frozen features and the stage-1 head, fit the chosen method, write head and logits."""
from __future__ import annotations

from pathlib import Path
import pandas as pd
import torch

from ltpipe.classifier import Stage2Data, fit_stage2
from ltpipe.classifier.ensemble import ensemble_heads
from ltpipe.models.heads import save_head
from ltpipe.data.prepared import load_prepared
from ltpipe.features import load_features, load_train_views
from ltpipe.io import write_csv, write_json, write_npy
from ltpipe.models import load_classifier
from ltpipe.tables import frequency_ranked
from ltpipe.runtime import Runtime
from ltpipe.schema import as_params


def weight_norms(head: torch.nn.Module) -> torch.Tensor:
    """Per-class norm of the head's effective weight: the W of its inference logits W g(x) + b."""
    return head.effective_weight().detach().norm(dim=1)


def retrain_classifier(params, prepared_dir, model_dir, features_dir, out_dir) -> None:
    """`params`: the validated Params (or a mapping, validated here)."""
    params = as_params(params)
    method = params.stage2.method
    device = Runtime.from_params(params.runtime).device
    prepared = load_prepared(prepared_dir)
    base_head = load_classifier(model_dir).head.to(device)
    data = Stage2Data(
        train_features=load_features(features_dir, "train", device),
        train_labels=prepared.split("train").labels.to(device),
        train_views=load_train_views(features_dir, params.stage2.train_views, device),
        val_features=load_features(features_dir, "val", device), val_labels=prepared.split("val").labels.to(device),
        class_counts=list(prepared.class_counts), base_head=base_head,
        seed=params.seed if params.stage2.seed is None else params.stage2.seed, task=prepared.task)
    head, info = fit_stage2(method, data, **params.stage2_kwargs())
    ensemble = params.stage2.ensemble
    if ensemble.enabled:
        head = ensemble_heads(base_head, head, t_old=ensemble.t_old, t_new=ensemble.t_new)
        info["ensemble"] = {"t_old": ensemble.t_old, "t_new": ensemble.t_new}
    head.eval()
    out_dir = Path(out_dir)
    with torch.no_grad():
        for split in ("val", "test"):
            write_npy(out_dir / f"logits_{split}.npy", head(load_features(features_dir, split, device)).cpu().numpy())
        norms = pd.DataFrame({"class": prepared.classes, "train_count": prepared.class_counts,
                              "stage1": weight_norms(base_head).cpu().numpy().round(6),
                              "stage2": weight_norms(head).cpu().numpy().round(6)})
    save_head(out_dir / "head.safetensors", head)
    write_json(out_dir / "info.json", {"method": method, **info})
    write_csv(out_dir / "weight_norms.csv", frequency_ranked(norms))
