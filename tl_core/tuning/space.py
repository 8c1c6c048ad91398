"""The search space of jobs.tune: which head settings a search varies, and how, as a small JSON or YAML file.

    {"learning_rate": {"loguniform": [1e-4, 3e-2]},   # sampled on a log scale between the two
     "epochs": {"choice": [20, 40, 60, 80]},          # one of the values
     "head_dropout": {"uniform": [0.0, 0.5]},
     "batch_size": {"randint": [32, 257]},            # an integer, low <= n < high
     "head_hidden": 512}                              # a plain value: fixed for every trial

Only the fields that act on the head can be searched: the features are computed once, so anything that
changes them (backbone, image size, augmentation) is the same for every trial. A field left out keeps the
value of the base configuration (the flags given to jobs.tune). Every value a distribution can produce is
checked against TrainConfig before the search starts, and a bad entry is refused in one line naming its key.
"""
import dataclasses
import json
from pathlib import Path

from ray import tune

from tl_core.config import TrainConfig

SEARCHABLE = ("learning_rate", "epochs", "batch_size", "head_hidden", "head_dropout", "head_l2", "label_smoothing",
              "head_schedule", "class_balance")
DISTRIBUTIONS = {"loguniform": 2, "uniform": 2, "randint": 2, "choice": None}  # name -> number of arguments

# The default space: around the default recipe (Adam one-cycle 3e-3, 60 epochs, batch 100, no regularisation).
DEFAULT_SPACE = {
    "learning_rate": {"loguniform": [3e-4, 3e-2]},
    "epochs": {"choice": [20, 40, 60, 80]},
    "batch_size": {"choice": [32, 64, 128, 256]},
    "head_dropout": {"uniform": [0.0, 0.5]},
    "head_l2": {"choice": [0.0, 1e-5, 1e-4, 1e-3]},
    "label_smoothing": {"choice": [0.0, 0.05, 0.1]},
}


class SearchSpaceError(ValueError):
    pass


def read_space(path: str | Path) -> dict:
    """The search space in a .json, .yaml or .yml file (SearchSpaceError if it cannot be read)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SearchSpaceError(f"cannot read search space {path}: {error.strerror}") from None
    is_yaml = path.suffix in (".yaml", ".yml")
    try:
        if is_yaml:
            import yaml  # a dependency of Ray

            space = yaml.safe_load(text)
        else:
            space = json.loads(text)
    except Exception as error:  # json.JSONDecodeError, yaml.YAMLError
        raise SearchSpaceError(f"search space {path} is not valid {'YAML' if is_yaml else 'JSON'}: "
                               f"{str(error).splitlines()[0]}") from None
    if not isinstance(space, dict) or not space:
        raise SearchSpaceError(f"search space {path} must map setting names to distributions, e.g. "
                               '{"learning_rate": {"loguniform": [1e-4, 1e-2]}}')
    return space


def _values_to_check(key: str, entry):
    """The values a distribution entry can produce at its edges (all of them for a choice)."""
    if not isinstance(entry, dict):
        return [entry]
    if len(entry) != 1 or next(iter(entry)) not in DISTRIBUTIONS:
        raise SearchSpaceError(f"search space key {key!r}: expected a value or one of "
                               f"{{{', '.join(f'{name}: [...]' for name in DISTRIBUTIONS)}}}, got {entry!r}")
    (name, arguments), = entry.items()
    if not isinstance(arguments, list) or not arguments or (DISTRIBUTIONS[name] and len(arguments) != DISTRIBUTIONS[name]):
        expected = "a non-empty list of values" if name == "choice" else "[low, high]"
        raise SearchSpaceError(f"search space key {key!r}: {name} takes {expected}, got {arguments!r}")
    if name == "choice":
        return arguments
    low, high = arguments
    if name == "randint":
        if not all(isinstance(value, int) and not isinstance(value, bool) for value in arguments) or not low < high:
            raise SearchSpaceError(f"search space key {key!r}: randint takes integers [low, high) with low < high, "
                                   f"got {arguments!r}")
        return [low, high - 1]
    if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in arguments) or not low < high:
        raise SearchSpaceError(f"search space key {key!r}: {name} takes numbers [low, high] with low < high, got {arguments!r}")
    if name == "loguniform" and not low > 0:
        raise SearchSpaceError(f"search space key {key!r}: loguniform needs low > 0, got {arguments!r}")
    return [float(low), float(high)]


def check_space(space: dict, base: TrainConfig) -> dict:
    """The space, every key and every value it can produce checked against TrainConfig; SearchSpaceError naming the key."""
    for key, entry in space.items():
        if key not in SEARCHABLE:
            known = {field.name for field in dataclasses.fields(TrainConfig)}
            why = ("it changes the features, which are computed once for every trial" if key in known
                   else "it is not a training setting")
            raise SearchSpaceError(f"search space key {key!r} cannot be searched ({why}); searchable: {', '.join(SEARCHABLE)}")
        for value in _values_to_check(key, entry):
            try:
                dataclasses.replace(base, **{key: value})
            except (ValueError, TypeError) as error:
                raise SearchSpaceError(f"search space key {key!r}: {value!r} is not a valid value: {error}") from None
    return space


def max_epochs(space: dict, base: TrainConfig) -> int:
    """The most epochs any trial can run (the early-stopping scheduler's horizon)."""
    entry = space.get("epochs", base.epochs)
    return int(max(_values_to_check("epochs", entry)))


def to_tune(space: dict) -> dict:
    """The space as Ray Tune's param_space."""
    def distribution(entry):
        if not isinstance(entry, dict):
            return entry
        (name, arguments), = entry.items()
        return tune.choice(arguments) if name == "choice" else getattr(tune, name)(*arguments)

    return {key: distribution(entry) for key, entry in space.items()}
