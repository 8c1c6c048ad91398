"""The job's configuration: one typed place, with defaults chosen by measurement (benchmarks/accuracy.py)
and the seed's classic recipe one switch away (SEED_RECIPE, `--recipe seed`).

Each field carries its documentation; the command line's flags are made from the fields
(jobs/cli.py: add_field_arguments), so a setting is declared once.
"""
import dataclasses
import json
import types
import typing
from pathlib import Path

from tl_core import storage

# The two phases of a run: the head on the frozen backbone for `epochs`, then fine-tuning for `fine_tune_epochs`.
HEAD, FINE_TUNE = "head", "fine_tune"


def option(default, help: str, **flag):
    """A settings field and its documentation, from which jobs/cli.py's add_field_arguments makes its flag. flag: how the
    flag differs from the plain --field-name: flag="--promote-metric" (another name), with const=... (sets that value,
    e.g. --skip-bad-files); choices=(...); negative=True (only --no-name); negatable=True (--name and --no-name);
    group=... (an argument group); command_line=False (no flag: the job sets it)."""
    return dataclasses.field(default=default, metadata={"help": help, **flag})


RAY_GROUP = "distributed training on Ray Train"

# The seed's recipe exactly (`--recipe seed`): the fields whose defaults differ from it. Frozen
# backbone, one Dense layer, Adam 1e-3, 6 epochs, a fresh augmentation and backbone pass per epoch.
SEED_RECIPE = {"augment": True, "epochs": 6, "head_hidden": 0, "feature_views": 0, "head_schedule": "constant",
               "head_dropout": 0.0, "learning_rate": 1e-3, "class_balance": "none"}

# config.json's schema. Every file the job writes carries it (to_dict); a file without it is either a run saved before
# it existed (it names every field of the first release, FIRST_FIELDS, as every saved config.json did) or written
# by hand. Version 2: the first with the key; head_cycle_ends added. Version 3: class_balance added, default
# logit_adjust (a file of version 2 trained with the plain loss: VERSION_2_ADDED).
CONFIG_VERSION = 3
VERSION_KEY = "config_version"
FIRST_FIELDS = {"data_dir", "backbone", "image_size", "batch_size", "epochs", "learning_rate", "augment", "seed",
                "output_dir", "cache_dir"}
# Fields added before the version existed, with the value a run saved without them trained with: such a
# config.json reproduces and resumes that run, not today's default.
ADDED_FIELDS = {"feature_views": 0, "head_schedule": "constant", "head_hidden": 0, "head_dropout": 0.0, "head_l2": 0.0,
                "label_smoothing": 0.0, "adapt_batchnorm": False, "class_balance": "none"}
VERSION_2_ADDED = {"class_balance": "none"}  # fields added since version 2, with the value such a run trained with
CLASS_BALANCES = ("none", "weights", "logit_adjust")  # how training treats class frequency (model/classifier.py)
MIN_IMAGE_SIDE, MAX_IMAGE_MEGAPIXELS = 8, 100.0  # the data check's default limits (data/checks.py)


# A configuration file's values as JSON spells them: a string is never taken for a number or a boolean ("false" would
# be true in Python), and null only where a field may be unset.
_JSON_TYPES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", type(None): "null"}


def _accepts(kind, value) -> bool:
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        return any(_accepts(option, value) for option in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        return isinstance(value, list) and all(_accepts(typing.get_args(kind)[0], item) for item in value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _describe(kind) -> str:
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        return " or ".join(_describe(option) for option in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        return "a list of " + {int: "whole numbers", float: "numbers", str: "strings"}[typing.get_args(kind)[0]]
    return _JSON_TYPES.get(kind, kind.__name__)


def check_type(name: str, value, kind) -> None:
    """A ValueError naming the key, its value and what it must be, unless value (as read from JSON) is of type kind."""
    if _accepts(kind, value):
        return
    hint = ""
    if isinstance(value, str):
        try:
            unquoted = json.loads(value)
        except ValueError:
            unquoted = None
        if unquoted is not None and _accepts(kind, unquoted):
            hint = f": write it without quotes, \"{name}\": {value}"
    raise ValueError(f"configuration key {name!r} is {json.dumps(value)}, which is not {_describe(kind)}{hint}")


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """Which images a run reads and how they are split and checked: TrainConfig's data fields, made once by
    TrainConfig.data (data/sources.py reads them)."""

    data_dir: str | None  # None: the built-in sample
    validation_split: float
    seed: int
    image_size: int
    bad_files: str  # "fail" or "skip"
    recheck: bool
    min_image_side: int
    max_image_megapixels: float

    @property
    def limits(self) -> dict:
        """The check's limits, as the find_* functions of data/checks.py take them."""
        return dict(min_side=self.min_image_side, max_pixels=int(self.max_image_megapixels * 1e6))


@dataclasses.dataclass(frozen=True)
class BackbonePass:
    """The frozen backbone run once over images: which backbone (cache_dir: where the built-in one is prepared), at
    what image size, in batches of what size. TrainConfig's fields, made once by TrainConfig.backbone_pass."""

    backbone: str
    image_size: int
    batch_size: int
    cache_dir: str | None


@dataclasses.dataclass(frozen=True)
class HeadRecipe:
    """How the head is built and trained on backbone features, wherever it trains (a run, a search's trials, the audit's
    folds): TrainConfig's head fields, made once by TrainConfig.head_recipe."""

    num_epochs: int
    batch_size: int
    seed: int
    learning_rate: float
    schedule: str  # "constant" or "one_cycle"
    cycle_ends: tuple[int, ...]  # the epochs at which each one-cycle ends
    hidden: int
    dropout: float
    l2: float
    class_balance: str
    label_smoothing: float
    jit_compile: bool

    def over(self, epochs: int) -> "HeadRecipe":
        """The same head trained for `epochs` epochs, in one cycle of its schedule over them."""
        return dataclasses.replace(self, num_epochs=epochs, cycle_ends=(epochs,))


@dataclasses.dataclass
class TrainConfig:
    data_dir: str | None = option(None, "directory with train/ and validation/ class folders or Parquet shards, or one "
                                  "folder per class (default: the built-in cats-vs-dogs sample, prepared on first use)")
    validation_split: float = option(0.2, "fraction of each class held out when --data-dir has class folders but no "
                                     "train/ and validation/ (seeded by --seed)")
    bad_files: str = option("fail", "leave out files that cannot be used (a run lists them in its skipped_files.json; "
                            "jobs.ingest leaves them out of the Parquet dataset); default: stop and list them",
                            flag="--skip-bad-files", const="skip")
    min_image_side: int = option(MIN_IMAGE_SIDE, "smaller images (pixels) are bad files: they carry too little to classify")
    max_image_megapixels: float = option(MAX_IMAGE_MEGAPIXELS, "larger images are bad files, refused from their header before "
                                         "decoding (decompression bombs)")
    recheck: bool = option(False, "decode every Parquet row before training even when jobs.ingest checked the rows "
                           "(default: trust the check its shards record, with limits at least as strict)")
    backbone: str = option("mobilenet_v2", "TF Hub handle, Kaggle handle, local SavedModel directory, or "
                           "'mobilenet_v2' (the built-in offline ImageNet MobileNetV2)")
    image_size: int = option(224, "images are resized to this square size, the backbone's")
    batch_size: int = option(100, "images per step, per worker")
    epochs: int = option(60, "epochs of the head (the frozen backbone); on cached features each takes a fraction of a "
                         "second")
    learning_rate: float = option(3e-3, "Adam's learning rate for the head: the peak of the one-cycle schedule, or the "
                                  "constant rate (the seed's recipe: 1e-3, Adam's default)")
    augment: bool = option(False, "ImageDataGenerator-style augmentation of the training images, as in the seed's "
                           "recipe: a fresh warp and backbone pass every epoch, or --feature-views augmented views "
                           "computed once", negatable=True)
    feature_views: int = option(0, "augmented feature bank: run the frozen backbone on this many augmented views of "
                                "each training image once, then train the head on them, each epoch drawing one view "
                                "per image (0: a fresh augmentation and backbone pass every epoch, the seed's recipe; "
                                "unused with --no-augment)")
    head_schedule: str = option("one_cycle", "the head's learning rate: 'constant', or 'one_cycle' (warm-up to "
                                "--learning-rate over the first quarter of the steps, then cosine decay to zero)")
    head_cycle_ends: list[int] | None = option(None, "the epochs at which each one-cycle of the head's learning rate "
                                               "ends (None: one cycle over --epochs). Set by `--resume --epochs N` past "
                                               "the last end: the added epochs run a one-cycle of their own",
                                               command_line=False)
    head_hidden: int = option(256, "units of a hidden ReLU layer in the head (0: the seed recipe's single Dense layer)")
    head_dropout: float = option(0.0, "dropout in front of each Dense layer of the head, while training")
    head_l2: float = option(0.0, "L2 penalty on the kernels of the head's Dense layers (0: none)")
    class_balance: str = option("logit_adjust", "how training treats class frequency: 'none' (the plain loss), 'weights' (each "
                                "class's examples weighted by 1 / its share of the training set) or 'logit_adjust' (the "
                                "loss on logits plus log of the class prior: balanced predictions; Menon et al. 2021). "
                                "Both are the plain loss when every class has as many training images; the default "
                                "by measurement, docs/imbalance.md")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy loss being trained (0: none; the reported "
                                    "losses are never smoothed)")
    adapt_batchnorm: bool = option(False, "let the backbone's BatchNorm layers adapt to the data (batch statistics, "
                                   "trained scales and offsets) while the rest stays frozen, as fastai does: for data far "
                                   "from ImageNet. The backbone then runs forward and backward every step (no cached "
                                   "features); built-in mobilenet_v2 only")
    fine_tune_epochs: int = option(0, "after the head's epochs, train the top of the backbone this many more epochs "
                                   "(0: off)")
    fine_tune_layers: int = option(40, "backbone layers unfrozen from the top, BatchNorm excepted; 0 = all. Anything "
                                   "but 0 needs the built-in mobilenet_v2 (another backbone is an opaque TF Hub module)")
    fine_tune_learning_rate: float = option(1e-5, "learning rate while fine-tuning")
    cache_features: bool | None = option(None, "run the backbone once per training image and train the head on the "
                                         "kept features (needs --no-augment; default: on exactly when augmentation "
                                         "is off)")
    feature_cache_memory_mb: int = option(2048, "cached features larger than this go to a Parquet file in the run "
                                          "directory, streamed each epoch")
    seed: int = option(0, "seed of every random draw: weights, split, shuffle order, augmentation")
    jit_compile: bool = option(False, "XLA-compile the training step (off by default: on a CPU compiling takes "
                               "minutes; benchmarks/gpu.py measures whether it pays on a GPU)", negatable=True)
    bf16: bool = option(False, "run the backbone in bfloat16 (built-in mobilenet_v2 only; the head and logits stay "
                        "float32; for GPUs, see benchmarks/gpu.py)")
    audit: bool = option(True, "audit the data from the run's own cached features once it has trained: leakage, near "
                         "copies, likely label errors, class balance (audit.json, findings.parquet and contact sheets "
                         "in the run directory; docs/audit.md)", negative=True)
    export_tflite: bool = option(False, "also write model.tflite (float32), model_dynamic_range.tflite and labels.txt")
    output_dir: str | None = option(None, "the run directory (default runs/<UTC timestamp>)")
    cache_dir: str | None = option(None, "asset cache for weights, SavedModels, the sample data and the folder "
                                   "check's remembered verdicts (default $TL_CACHE_DIR or ~/.cache/tl_core)")
    ray: bool = option(False, "run on Ray Train even with one worker (implied by any flag of this group); connects to "
                       "$RAY_ADDRESS or the cluster of `ray job submit`, else starts Ray locally", group=RAY_GROUP)
    num_workers: int = option(1, "data-parallel workers, one per GPU; more than 1 runs on Ray Train", group=RAY_GROUP)
    use_gpu: bool = option(False, "give each worker GPUs", group=RAY_GROUP)
    cpus_per_worker: int = option(1, "CPUs Ray reserves per worker", group=RAY_GROUP)
    gpus_per_worker: int = option(1, "GPUs per worker, with --use-gpu (MultiWorkerMirroredStrategy mirrors over "
                                  "them too)", group=RAY_GROUP)
    max_failures: int = option(2, "worker-group restarts from the last epoch's checkpoint before giving up",
                               group=RAY_GROUP)

    @property
    def uses_feature_bank(self) -> bool:
        """The head trains on feature_views augmented views of each image (without augmentation, views would be equal)."""
        return self.augment and self.feature_views > 0

    @property
    def uses_feature_cache(self) -> bool:
        """The head trains on backbone features computed once: the unaugmented images, or the feature bank's views."""
        return self.cache_features if self.cache_features is not None else (not self.augment or self.uses_feature_bank)

    @property
    def head_cycles(self) -> list[int]:
        """The epochs at which each one-cycle of the head's learning rate ends."""
        return self.head_cycle_ends or [self.epochs]

    @property
    def data(self) -> DataSettings:
        return DataSettings(data_dir=self.data_dir, validation_split=self.validation_split, seed=self.seed,
                            image_size=self.image_size, bad_files=self.bad_files, recheck=self.recheck,
                            min_image_side=self.min_image_side, max_image_megapixels=self.max_image_megapixels)

    @property
    def backbone_pass(self) -> BackbonePass:
        return BackbonePass(backbone=self.backbone, image_size=self.image_size, batch_size=self.batch_size,
                            cache_dir=self.cache_dir)

    @property
    def head_recipe(self) -> HeadRecipe:
        return HeadRecipe(num_epochs=self.epochs, batch_size=self.batch_size, seed=self.seed,
                          learning_rate=self.learning_rate, schedule=self.head_schedule, cycle_ends=tuple(self.head_cycles),
                          hidden=self.head_hidden, dropout=self.head_dropout, l2=self.head_l2,
                          class_balance=self.class_balance, label_smoothing=self.label_smoothing,
                          jit_compile=self.jit_compile)

    def trained_longer(self, epochs: int) -> "TrainConfig":
        """This run with `epochs` head epochs (`--resume --epochs`): epochs past the last cycle's end run a one-cycle of
        their own, as calling fastai's fit_one_cycle again does; fewer epochs stop within the cycle planned, so that
        resuming it with its first epoch count later continues that cycle exactly."""
        if self.head_schedule != "one_cycle":
            return dataclasses.replace(self, epochs=epochs)
        ends = self.head_cycles + ([epochs] if epochs > self.head_cycles[-1] else [])
        return dataclasses.replace(self, epochs=epochs, head_cycle_ends=None if ends == [epochs] else ends)

    @property
    def uses_ray(self) -> bool:
        return self.ray or self.num_workers > 1

    @property
    def global_batch_size(self) -> int:
        """Images per optimizer step: batch_size is per worker."""
        return self.batch_size * self.num_workers

    def __post_init__(self):
        if self.cache_dir:
            storage.local_path(self.cache_dir, "--cache-dir")
        for name in ("image_size", "batch_size", "epochs", "num_workers", "cpus_per_worker", "gpus_per_worker",
                     "min_image_side"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("learning_rate", "max_image_megapixels"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("fine_tune_epochs", "fine_tune_layers", "feature_cache_memory_mb", "feature_views", "head_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not self.fine_tune_learning_rate > 0:
            raise ValueError(f"fine_tune_learning_rate must be positive, got {self.fine_tune_learning_rate!r}")
        if not 0 < self.validation_split < 1:
            raise ValueError(f"validation_split must be between 0 and 1, got {self.validation_split!r}")
        if self.class_balance not in CLASS_BALANCES:
            raise ValueError(f"class_balance must be 'none', 'weights' or 'logit_adjust', got {self.class_balance!r}")
        if self.bad_files not in ("fail", "skip"):
            raise ValueError(f"bad_files must be 'fail' or 'skip', got {self.bad_files!r}")
        if self.cache_features and self.augment and not self.feature_views:
            raise ValueError("cache_features needs augment off or --feature-views: augmented images differ every "
                             "epoch, so their features cannot be computed once (pass --no-augment, or --feature-views K "
                             "to compute K augmented views once)")
        if self.augment and self.feature_views == 1:
            raise ValueError("feature_views 1 holds only view 0, the images as they are: the head would train on no "
                             "augmentation. Pass --feature-views 2 or more (view v > 0 is augmented), or --no-augment")
        if self.uses_feature_bank and self.cache_features is False:
            raise ValueError("the feature bank (--feature-views) trains the head on cached features: pass --feature-views 0 "
                             "with --no-cache-features")
        if self.adapt_batchnorm and self.uses_feature_cache:
            raise ValueError("adapt_batchnorm changes the backbone every step, so its features cannot be cached: "
                             "train on images, e.g. --recipe seed --adapt-batchnorm")
        if self.adapt_batchnorm and self.fine_tune_epochs:
            raise ValueError("adapt_batchnorm and fine_tune_epochs are two ways of training the backbone: choose one")
        if self.head_schedule not in ("constant", "one_cycle"):
            raise ValueError(f"head_schedule must be 'constant' or 'one_cycle', got {self.head_schedule!r}")
        for name in ("head_dropout", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.head_l2 >= 0:
            raise ValueError(f"head_l2 must be zero or positive, got {self.head_l2!r}")
        ends = self.head_cycle_ends
        if ends is not None and not (isinstance(ends, list) and ends and all(
                isinstance(end, int) and not isinstance(end, bool) and end > 0 for end in ends)
                and ends == sorted(set(ends)) and ends[-1] >= self.epochs):
            raise ValueError(f"head_cycle_ends must be increasing positive epoch numbers, the last at least epochs "
                             f"({self.epochs}), got {ends!r}")
        if not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise ValueError(f"max_failures must be a non-negative integer, got {self.max_failures!r}")

    def to_dict(self) -> dict:
        """The fields, the schema version, and the derived global batch size (stated for the reader, ignored on load)."""
        return {VERSION_KEY: CONFIG_VERSION, **dataclasses.asdict(self), "global_batch_size": self.global_batch_size}

    @classmethod
    def from_dict(cls, values: dict, base: dict | None = None) -> "TrainConfig":
        """The configuration values describe. A run saved before the schema version existed gets the settings it
        trained with (ADDED_FIELDS) for the fields it lacks; any other dict (saved since, or written by hand)
        means `base` (default: today's defaults; e.g. SEED_RECIPE) plus its values."""
        values = dict(values)
        version = values.pop(VERSION_KEY, None)
        values.pop("global_batch_size", None)
        if version is not None and (not isinstance(version, int) or version > CONFIG_VERSION):
            raise ValueError(f"{VERSION_KEY} {version!r} is not one this version of the job reads (it reads up to "
                             f"{CONFIG_VERSION}): the configuration was written by a newer release")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown configuration keys {sorted(unknown)}; known keys: {sorted(known)}")
        types_of = {field.name: field.type for field in dataclasses.fields(cls)}
        for name, value in values.items():
            check_type(name, value, types_of[name])
        saved_before_versions = version is None and FIRST_FIELDS <= set(values)
        if version == 2:
            return cls(**{**VERSION_2_ADDED, **values})
        return cls(**{**(ADDED_FIELDS if saved_before_versions else base or {}), **values})

    @classmethod
    def from_json(cls, path: str | Path, base: dict | None = None) -> "TrainConfig":
        try:
            values = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error.msg}, line {error.lineno}): a configuration file is a "
                             "JSON object of settings, e.g. {\"epochs\": 10}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} holds a JSON {type(values).__name__}, not an object of settings such as "
                             "{\"epochs\": 10}")
        try:
            return cls.from_dict(values, base)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None

    def describe(self) -> str:
        values = self.to_dict()
        width = max(map(len, values))
        return "\n".join(f"  {key:<{width}} {value}" for key, value in values.items())
