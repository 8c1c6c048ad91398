"""The job's configuration: one typed place, with the classic recipe's defaults."""
import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass
class TrainConfig:
    # Data: a directory holding train/ and validation/ class folders; None means the built-in
    # cats-vs-dogs sample, prepared in the cache on first use.
    data_dir: str | None = None
    # When data_dir holds class folders but no train/ and validation/: the fraction of each class
    # held out for validation (seeded by `seed`).
    validation_split: float = 0.2
    # Files that cannot be used (undecodable, unreadable, too small or too large): "fail" lists them
    # all before training; "skip" trains without them and lists them in the run's skipped_files.json.
    bad_files: str = "fail"
    min_image_side: int = 8  # pixels; smaller images carry too little to classify
    max_image_megapixels: float = 100.0  # larger images are refused before decoding (decompression bombs)
    # Anything hub.KerasLayer resolves (tfhub.dev URL, Kaggle handle, local SavedModel directory),
    # or "mobilenet_v2" for the built-in offline ImageNet MobileNetV2.
    backbone: str = "mobilenet_v2"
    image_size: int = 224
    batch_size: int = 100
    epochs: int = 6
    learning_rate: float = 1e-3  # Adam's default, as in the recipe
    augment: bool = True
    # Fine-tuning, after the head's epochs: the top fine_tune_layers layers of the backbone (0: all;
    # BatchNorm stays frozen) train with the head for fine_tune_epochs more epochs at a low learning
    # rate. 0 epochs: off. Layer by layer only for the built-in mobilenet_v2 (a Keras model).
    fine_tune_epochs: int = 0
    fine_tune_layers: int = 40
    fine_tune_learning_rate: float = 1e-5
    # Run the frozen backbone once per training image and train the head on the kept features.
    # None: on exactly when augmentation is off (random augmentation needs the backbone every epoch).
    cache_features: bool | None = None
    # Cached training features above this size go to a Parquet file in the run directory instead.
    feature_cache_memory_mb: int = 2048
    seed: int = 0
    # XLA-compile the training step. Off by default: on a CPU compiling the step (backbone
    # included) takes minutes; on GPUs, benchmarks/gpu.py tells whether it pays.
    jit_compile: bool = False
    # The backbone computes in bfloat16 (built-in mobilenet_v2 only; the head and logits stay float32).
    # Off by default: on CPUs it is slower; benchmarks/gpu.py measures it on GPUs.
    bf16: bool = False
    # Also write model.tflite (float32), model_dynamic_range.tflite and labels.txt next to model/.
    export_tflite: bool = False
    # Where the run's artifacts go; None means runs/<UTC timestamp>.
    output_dir: str | None = None
    # Asset cache (weights, SavedModels, sample data); None means $TL_CACHE_DIR or ~/.cache/tl_core.
    cache_dir: str | None = None
    # Data-parallel training on Ray Train. ray: on Ray even with one worker (any of the Ray options
    # below, given on the command line, turns it on); num_workers > 1 implies it.
    ray: bool = False
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int = 1
    gpus_per_worker: int = 1  # with use_gpu; MultiWorkerMirroredStrategy mirrors over them too
    max_failures: int = 2  # worker-group restarts from the last epoch's checkpoint before giving up

    @property
    def uses_feature_cache(self) -> bool:
        return self.cache_features if self.cache_features is not None else not self.augment

    @property
    def uses_ray(self) -> bool:
        return self.ray or self.num_workers > 1

    @property
    def global_batch_size(self) -> int:
        """Images per optimizer step: batch_size is per worker."""
        return self.batch_size * self.num_workers

    def __post_init__(self):
        for name in ("image_size", "batch_size", "epochs", "num_workers", "cpus_per_worker", "gpus_per_worker",
                     "min_image_side"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("learning_rate", "max_image_megapixels"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("fine_tune_epochs", "fine_tune_layers", "feature_cache_memory_mb"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not self.fine_tune_learning_rate > 0:
            raise ValueError(f"fine_tune_learning_rate must be positive, got {self.fine_tune_learning_rate!r}")
        if not 0 < self.validation_split < 1:
            raise ValueError(f"validation_split must be between 0 and 1, got {self.validation_split!r}")
        if self.bad_files not in ("fail", "skip"):
            raise ValueError(f"bad_files must be 'fail' or 'skip', got {self.bad_files!r}")
        if self.cache_features and self.augment:
            raise ValueError("cache_features needs augment off: augmented images differ every epoch, "
                             "so their features cannot be computed once (pass --no-augment)")
        if not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise ValueError(f"max_failures must be a non-negative integer, got {self.max_failures!r}")

    def to_dict(self) -> dict:
        """The fields, plus the derived global batch size (stated for the reader, ignored on load)."""
        return {**dataclasses.asdict(self), "global_batch_size": self.global_batch_size}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        values = {key: value for key, value in values.items() if key != "global_batch_size"}
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown configuration keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def describe(self) -> str:
        values = self.to_dict()
        width = max(map(len, values))
        return "\n".join(f"  {key:<{width}} {value}" for key, value in values.items())
