"""Whether two runs ended with the same weights: `python -m benchmarks.same_weights RUN_A RUN_B`.

For a change that must not change what a run computes (a refactor, a faster loop): run the same command at the commit
before and the commit after, on the same machine, and compare. Prints, for every variable of each run's last
checkpoint (the head and its optimizer while the backbone is frozen), whether it is equal bit for bit, and the largest
relative difference; exit status 0 when every variable is equal, 1 otherwise. (Float32 results differ between CPUs:
compare runs made on one machine.)
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

import tl_core  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)


def last_checkpoint(run_dir: Path) -> dict:
    import tensorflow as tf

    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["directory"]
    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints" / latest / "state"))
    return {name: np.asarray(reader.get_tensor(name)) for name in reader.get_variable_to_shape_map()
            if "save_counter" not in name and name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.same_weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs=2, type=Path, metavar="RUN")
    first, second = (last_checkpoint(run) for run in parser.parse_args(argv).runs)
    if first.keys() != second.keys():
        print(f"different variables: {sorted(first.keys() ^ second.keys())}")
        return 1
    differing = 0
    for name in sorted(first):
        a, b = first[name], second[name]
        same = a.shape == b.shape and np.array_equal(a, b)
        differing += not same
        largest = 0.0 if same or a.shape != b.shape else float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)))
        print(f"{'same' if same else 'DIFFERS':8} {largest:9.2e}  {name}")
    print(f"{len(first) - differing} of {len(first)} variables bit-identical")
    return 0 if differing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
