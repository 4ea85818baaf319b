"""The one schema of params.yaml: every section, key, type, range and default, checked once before any stage works.

Fixed sections are declared here; the per-method blocks (`losses`, `samplers`, `mixers`, `stage2.<method>`,
`dataset.<name>`, `train.augment.<policy>`) are generated from the registries' factory signatures, so a method's
keyword arguments are declared once, in its signature. Stages receive the validated, frozen `Params` object.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Dict, Literal, Optional

from pydantic import (BaseModel, ConfigDict, Field, Strict, ValidationError, ValidationInfo, create_model,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from ltpipe.errors import ConfigError
from ltpipe.registry import BLOCK_CONFIG, Registry
from ltpipe.types import Bool, Float, KwargsBlock, Milestones, NonNegFloat, NonNegInt, OpenUnitFloat, PosFloat, PosInt
from ltpipe.validation import format_validation_error, relation_error

SECTION_CONFIG = ConfigDict(extra="forbid", frozen=True)


class Section(BaseModel):
    model_config = SECTION_CONFIG


def blocks_model(registry: Registry, title: str, **fixed_fields: Any) -> type[BaseModel]:
    """A section holding one keyword-argument block per registry entry (plus `fixed_fields`), each defaulted."""
    fields = {name: (registry.kwargs_model(name), Field(default_factory=registry.kwargs_model(name)))
              for name in registry.names()}
    return create_model(title, __config__=BLOCK_CONFIG, **fixed_fields, **fields)


def kwargs_of(blocks: BaseModel, name: str) -> Dict[str, Any]:
    """The keyword arguments of entry `name` in a blocks section, as a plain dict."""
    return dict(getattr(blocks, name))


Fraction = Annotated[Float, Field(gt=0, lt=1)]


class Pareto(Section):
    """imbalance.pareto: the DB paper's Pareto target counts (multilabel task; `ltpipe.multilabel.imbalance`)."""

    n_min: PosInt = 1
    shape: PosFloat = 6.0
    tail: Fraction = 0.99  # the quantile of the Pareto distribution the rarest class sits at


# The long-tailed profiles each task can build: LDAM's per-class counts, or the DB builder for sets of labels.
PROFILES = {"multiclass": ("exp", "step", "none"), "multilabel": ("pareto", "none")}


class Imbalance(Section):
    profile: Literal["exp", "step", "pareto", "none"] = "exp"
    factor: Annotated[Float, Field(ge=1)] = 10.0  # n_max / n_min
    n_max: Optional[PosInt] = None
    class_order: Literal["index", "shuffle"] = "index"
    pareto: Pareto = Field(default_factory=Pareto)


class Split(Section):
    val_from: Literal["train", "test", "source"] = "train"
    val_per_class: PosInt = 20
    test_per_class: PosInt = 30
    val_fraction: Fraction = 0.1  # multilabel: the share of images carved for val / test when the source has none
    test_fraction: Fraction = 0.2


class Evaluate(Section):
    many_threshold: NonNegInt = 100
    few_threshold: NonNegInt = 20
    head_threshold: NonNegInt = 100  # multilabel groups (Wu et al., ECCV 2020): head >= 100, tail < 20 train images
    tail_threshold: NonNegInt = 20
    f1_thresholds: Literal["per_class", "global"] = "per_class"
    logit_adjust_tau: Float = 1.0
    tsne: Bool = False
    tsne_max_points: Annotated[int, Strict(), Field(ge=2)] = 2000

    @model_validator(mode="after")
    def _groups(self):
        if self.few_threshold > self.many_threshold:
            raise relation_error("few_threshold", self.few_threshold,
                                 f"must be <= many_threshold ({self.many_threshold})")
        if self.tail_threshold > self.head_threshold:
            raise relation_error("tail_threshold", self.tail_threshold,
                                 f"must be <= head_threshold ({self.head_threshold})")
        return self


PRETRAINED_DIR = "data/pretrained"


class EnsembleParams(Section):
    """stage2.ensemble: the old/new classifier ensemble (Du & Wu, CVPR 2023) on top of any stage-2 method."""

    enabled: Bool = False
    t_old: PosFloat = 1.0
    t_new: PosFloat = 1.0


DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


class RuntimeParams(Section):
    """The `runtime:` section of params.yaml."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: Bool = False
    deterministic: Bool = True
    nproc_per_node: PosInt = 1
    sync_bn: Bool = False

    @field_validator("device")
    @classmethod
    def _device_syntax(cls, value: str) -> str:
        kind, _, index = value.partition(":")
        if kind not in ("auto", "cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
            raise ValueError(f"not a device; valid choices: {DEVICE_HELP}")
        return value

    def check_available(self) -> None:
        """A device this machine lacks fails here, when params are validated, before any stage does work."""
        from ltpipe.runtime import available_devices

        if self.device != "auto" and self.device not in available_devices():
            raise ValueError(f"not available on this machine; available devices: {', '.join(available_devices())}"
                             " (or auto)")


@functools.lru_cache(maxsize=None)
def params_model() -> type[BaseModel]:
    """The Params model, built once every registry has its entries."""
    from ltpipe.classifier import STAGE2
    from ltpipe.data.augment import POLICIES
    from ltpipe.data.sources import SOURCES
    from ltpipe.losses import LOSSES
    from ltpipe.mixing import MIXERS
    from ltpipe.samplers import SAMPLERS
    from ltpipe.tasks import TASKS
    from ltpipe.train.schedule import SCHEDULES

    from ltpipe.models import STAGE1_HEADS

    Dataset = blocks_model(SOURCES, "dataset", name=(SOURCES.name_type(), "digits"),
                           in_memory_max_size=(PosInt, 64))
    Augment = blocks_model(POLICIES, "train.augment", crop_padding=(NonNegInt, 1), flip=(Bool, False),
                           policy=(POLICIES.name_type(), "none"))

    Heads = blocks_model(STAGE1_HEADS, "model.heads")

    class Model(Section):
        backbone: str = "resnet8"  # resnet8/20/32/44/56/110, bbn_resnet32 or any timm model name
        pretrained: Optional[str] = None  # a weights file under data/pretrained/ (a DVC dependency of stage 1)
        freeze_stages: Annotated[int, Strict(), Field(ge=-1)] = -1  # -1: train all; 0: the stem; k: stem + k stages
        head: STAGE1_HEADS.name_type() = "linear"  # type: ignore[valid-type]
        heads: Heads = Field(default_factory=Heads)  # type: ignore[valid-type]

        @field_validator("backbone")
        @classmethod
        def _known(cls, name: str) -> str:
            from ltpipe.models import check_backbone

            check_backbone(name)
            return name

        @field_validator("pretrained")
        @classmethod
        def _under_the_dependency_folder(cls, path: Optional[str], info: ValidationInfo) -> Optional[str]:
            if path is None:
                return path
            parts = Path(path).parts
            if Path(path).is_absolute() or parts[:2] != tuple(PRETRAINED_DIR.split("/")) or ".." in parts:
                raise ValueError(f"must be a file under {PRETRAINED_DIR}/ (that folder is a dependency of "
                                 "train_backbone in dvc.yaml: replacing the file reruns stage 1)")
            if _checks(info, "check_files") and not Path(path).is_file():
                raise ValueError("no such file (put the weights file there, or set null)")
            return path

        @model_validator(mode="after")
        def _stages_exist(self):
            if self.freeze_stages >= 0:
                from ltpipe.models.freeze import backbone_num_stages

                stages = backbone_num_stages(self.backbone)
                if self.freeze_stages > stages:
                    raise relation_error("freeze_stages", self.freeze_stages,
                                         f"{self.backbone} has {stages} stages; valid choices: -1 (train all), 0 "
                                         f"(freeze the stem) .. {stages}")
            return self

    class Train(Section):
        epochs: PosInt = 30
        batch_size: PosInt = 64
        eval_batch_size: PosInt = 256
        optimizer: str = "sgd"  # sgd or any of timm's optimizers; its kwargs in optimizers.<name>
        lr: PosFloat = 0.05
        layer_decay: Optional[Annotated[Float, Field(gt=0, le=1)]] = None  # layer-wise lr decay (BEiT) for fine-tuning
        momentum: OpenUnitFloat = 0.9
        weight_decay: NonNegFloat = 5e-4
        warmup_epochs: NonNegInt = 2
        schedule: SCHEDULES.name_type() = "cosine"  # type: ignore[valid-type]
        milestones: Milestones = [160, 180]
        gamma: PosFloat = 0.01  # multistep factor per milestone
        sampler: SAMPLERS.name_type() = "instance"  # type: ignore[valid-type]
        mixer: MIXERS.name_type() = "none"  # type: ignore[valid-type]
        augment: Augment = Field(default_factory=Augment)  # type: ignore[valid-type]
        num_workers: NonNegInt = 0
        channels_last: Bool = False
        # Which epoch's weights stage 1 outputs: the last, or the one with the best validation metric (never test).
        select: Literal["last", "best_val"] = "last"

        @field_validator("optimizer")
        @classmethod
        def _known_optimizer(cls, name: str, info: ValidationInfo) -> str:
            from ltpipe.train.optim import optimizer_names

            if _checks(info, "check_optimizer") and name not in optimizer_names():
                raise ValueError(f"unknown optimizer {name!r}; valid choices: {', '.join(optimizer_names())}")
            return name

        @model_validator(mode="after")
        def _schedule(self):
            if self.warmup_epochs >= self.epochs:
                raise relation_error("warmup_epochs", self.warmup_epochs, f"must be < epochs ({self.epochs})")
            late = [m for m in self.milestones if m >= self.epochs]
            if self.schedule == "multistep" and late:
                raise relation_error("milestones", self.milestones,
                                     f"must be < epochs ({self.epochs}); {late} would never be reached")
            return self

    # stage2.seed: null uses the run seed; set it to repeat stage 2 on one cached stage 1 (the seed key would retrain).
    # stage2.train_views: 0 trains on the unaugmented features; V > 0 on V augmented views, one per epoch in turn.
    Stage2 = blocks_model(STAGE2, "stage2", method=(STAGE2.name_type(), "crt"), seed=(Optional[NonNegInt], None),
                          train_views=(NonNegInt, 0),
                          ensemble=(EnsembleParams, Field(default_factory=EnsembleParams)))

    class Params(Section):
        recipe: str = "none"  # the conf/recipe/ file that composed these params; informational, no stage reads it
        seed: NonNegInt = 0
        task: TASKS.name_type() = "multiclass"  # type: ignore[valid-type]
        dataset: Dataset = Field(default_factory=Dataset)  # type: ignore[valid-type]
        imbalance: Imbalance = Field(default_factory=Imbalance)
        split: Split = Field(default_factory=Split)
        model: Model = Field(default_factory=Model)
        loss: LOSSES.name_type() = "ce"  # type: ignore[valid-type]
        losses: blocks_model(LOSSES, "losses") = Field(  # type: ignore[valid-type]
            default_factory=blocks_model(LOSSES, "losses"))
        train: Train = Field(default_factory=Train)
        optimizers: Dict[str, KwargsBlock] = Field(default_factory=lambda: {
            "sgd": {"nesterov": False}, "adamw": {"betas": [0.9, 0.999], "eps": 1e-8}})
        samplers: blocks_model(SAMPLERS, "samplers") = Field(  # type: ignore[valid-type]
            default_factory=blocks_model(SAMPLERS, "samplers"))
        mixers: blocks_model(MIXERS, "mixers") = Field(  # type: ignore[valid-type]
            default_factory=blocks_model(MIXERS, "mixers"))
        stage2: Stage2 = Field(default_factory=Stage2)  # type: ignore[valid-type]
        evaluate: Evaluate = Field(default_factory=Evaluate)
        runtime: RuntimeParams = Field(default_factory=RuntimeParams)

        @model_validator(mode="after")
        def _optimizer_kwargs(self, info: ValidationInfo):
            from ltpipe.train.optim import check_optimizer

            if not _checks(info, "check_optimizer"):
                return self
            try:
                check_optimizer(self.train.optimizer, self.optimizer_kwargs())
            except ConfigError as err:
                raise relation_error(f"optimizers.{self.train.optimizer}", self.optimizer_kwargs(), str(err)) from None
            return self

        @model_validator(mode="after")
        def _head_fits_the_loss_and_stage2(self):
            from ltpipe.losses import build_loss

            needs_cosine = build_loss(self.loss, [2, 1], **self.loss_kwargs()).cosine_scale is not None
            if needs_cosine != (self.model.head == "cosine") and (needs_cosine or self.model.head == "cosine"):
                raise relation_error("model.head", self.model.head,
                                     f"loss {self.loss!r} " + ("trains LDAM's cosine classifier: set model.head: cosine"
                                                               if needs_cosine else
                                                               "is not a cosine-margin loss: use model.head linear "
                                                               "or causal (the cosine head is LDAM's)"))
            if self.stage2.method == "tde" and self.model.head != "causal":
                raise relation_error("stage2.method", "tde", "needs the causal head of stage 1: set model.head: causal")
            return self

        @model_validator(mode="after")
        def _fits_the_task(self):
            lines = [f"{key}: {name!r}: does not fit task {self.task!r}; valid choices for {self.task}: "
                     f"{', '.join(registry.names(self.task))}"
                     for key, registry, name in self._task_choices() if not registry.fits(name, self.task)]
            if self.imbalance.profile not in PROFILES[self.task]:
                lines.append(f"imbalance.profile: {self.imbalance.profile!r}: does not fit task {self.task!r}; valid "
                             f"choices for {self.task}: {', '.join(PROFILES[self.task])}")
            if self.stage2.ensemble.enabled and self.task != "multiclass":
                lines.append(f"stage2.ensemble.enabled: True: does not fit task {self.task!r}: the ensemble averages "
                             f"softmax probabilities of one label per image; set it false")
            if lines:
                raise PydanticCustomError("nested", "; ".join(lines), {"lines": lines})
            return self

        def _task_choices(self):
            """(key, registry, chosen name) of every choice of a registry entry, stage 2's loss and sampler too."""
            choices = [("dataset.name", SOURCES, self.dataset.name), ("loss", LOSSES, self.loss),
                       ("train.sampler", SAMPLERS, self.train.sampler), ("train.mixer", MIXERS, self.train.mixer),
                       ("stage2.method", STAGE2, self.stage2.method)]
            method = self.stage2.method
            for arg, registry in STAGE2.name_arguments(method).items():
                choices.append((f"stage2.{method}.{arg}", registry, self.stage2_kwargs()[arg]))
            return choices

        @model_validator(mode="after")
        def _device_exists(self):
            try:
                self.runtime.check_available()
            except ValueError as err:
                raise relation_error("runtime.device", self.runtime.device, str(err)) from None
            return self

        @model_validator(mode="after")
        def _batch_splits_over_processes(self):
            if self.train.batch_size < self.runtime.nproc_per_node:
                raise relation_error("train.batch_size", self.train.batch_size,
                                     f"must be >= runtime.nproc_per_node ({self.runtime.nproc_per_node}): the global "
                                     "batch is split over the processes")
            return self

        @model_validator(mode="after")
        def _loss_epochs_within_training(self):
            kwargs = self.loss_kwargs()
            drw = kwargs.get("drw_epoch")
            if drw is not None and drw >= self.train.epochs:
                raise relation_error(f"losses.{self.loss}.drw_epoch", drw,
                                     f"must be < train.epochs ({self.train.epochs}) or null")
            full = kwargs.get("full_before_end")
            if full is not None and kwargs.get("curriculum", True) and full >= self.train.epochs:
                raise relation_error(f"losses.{self.loss}.full_before_end", full,
                                     f"must be < train.epochs ({self.train.epochs}): the curriculum needs an epoch")
            return self

        def loss_kwargs(self) -> Dict[str, Any]:
            return kwargs_of(self.losses, self.loss)

        def sampler_kwargs(self) -> Dict[str, Any]:
            return kwargs_of(self.samplers, self.train.sampler)

        def mixer_kwargs(self) -> Dict[str, Any]:
            return kwargs_of(self.mixers, self.train.mixer)

        def dataset_kwargs(self) -> Dict[str, Any]:
            return kwargs_of(self.dataset, self.dataset.name)

        def policy_kwargs(self) -> Dict[str, Any]:
            return kwargs_of(self.train.augment, self.train.augment.policy)

        def optimizer_kwargs(self) -> Dict[str, Any]:
            return dict(self.optimizers.get(self.train.optimizer, {}))

        def head_kwargs(self) -> Dict[str, Any]:
            return kwargs_of(self.model.heads, self.model.head)

        def stage2_kwargs(self) -> Dict[str, Any]:
            return kwargs_of(self.stage2, self.stage2.method)

        def section(self, *names: str) -> Dict[str, Any]:
            """The named top-level sections as plain data (what a stage's run fingerprint hashes)."""
            return {name: _plain(getattr(self, name)) for name in names}

    return Params


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _checks(info: ValidationInfo, what: str) -> bool:
    """Whether validate_params was asked for the check named `what` (check_files, check_optimizer): all by default."""
    return (info.context or {}).get(what, True)


def validate_params(raw: Any, source: str = "params.yaml", *, check_files: bool = True,
                    check_optimizer: bool = True) -> BaseModel:
    """The validated Params, or ConfigError with one line per problem (`<key path>: <value>: <rule>`).

    check_files=False leaves out whether files the params name exist on this machine (model.pretrained): a recipe
    names the files of the machine it is meant to run on; the stages always check.
    check_optimizer=False leaves out stage 1's optimizer name and kwargs block, the only checks that import timm
    (about 2 s of start-up, most of it torchvision's import of torch._dynamo): for the stages after stage 1, which
    never build that optimizer and run only after stage 1 has run on the same values."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (seed, dataset, train, ...), "
                          f"got a {type(raw).__name__}")
    model = params_model()
    try:
        return model.model_validate(raw, context={"check_files": check_files, "check_optimizer": check_optimizer})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "", model)) from None


def default_params() -> Dict[str, Any]:
    """Every key with its default, as plain data (what an empty params.yaml means)."""
    return params_model()().model_dump(mode="json")


def as_params(params: Any) -> BaseModel:
    """`params` itself if already validated, else the validated Params of a mapping (library callers, tests)."""
    return params if isinstance(params, params_model()) else validate_params(params, "params")
