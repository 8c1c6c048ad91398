"""The data audit (`python -m jobs.audit`): what a validation score can be trusted for, checked before trusting it.

Checked: exact duplicates (exact.py: leakage across splits, conflicting labels, redundant copies) and class balance
(images per class and split, the largest over the smallest class, classes below a floor). Written into the audit's
directory: audit.json (the counts, the thresholds used, what was checked), findings.parquet (one row per finding)
and exact_duplicates.png (each group's first copies side by side, with their paths).
"""
import dataclasses
from pathlib import Path

import numpy as np

from tl_core import artifacts, storage
from tl_core.audit.exact import LEAKAGE, exact_duplicates, hashed_examples

AUDIT_FILE = "audit.json"
FINDINGS_FILE = "findings.parquet"
EXACT_SHEET = "exact_duplicates.png"
CLASS_BELOW_FLOOR = "class_below_floor"


@dataclasses.dataclass
class AuditSettings:
    class_floor: float = 0.1  # a class with fewer images than this share of the largest class (in its split) is flagged
    sheet_groups: int = 12  # duplicate groups drawn in the contact sheet


def class_balance(sources: dict, floor: float) -> tuple[dict, list[dict]]:
    """(images per class and split with the largest / smallest ratio, findings for classes below floor x largest)."""
    balance, findings = {}, []
    for split, source in sources.items():
        counts = np.bincount(source.labels, minlength=len(source.class_names))
        per_class = {name: int(count) for name, count in zip(source.class_names, counts)}
        largest = int(counts.max())
        balance[split] = {"images_per_class": per_class, "largest_over_smallest": largest / max(int(counts.min()), 1)}
        for name, count in per_class.items():
            if count < floor * largest:
                findings.append({"kind": CLASS_BELOW_FLOOR, "paths": [], "splits": [split], "classes": [name],
                                 "score": count / largest})
    return balance, findings


def leakage(sources: dict, known: dict | None = None) -> dict:
    """What a retrain records of its data (exact duplicates only): the validation images also in train/ and the
    exact-duplicate groups by kind. known: path -> SHA-256 of files hashed already (the retrain's manifest)."""
    exact = exact_duplicates([pair for split, source in sources.items() for pair in hashed_examples(source, split, known)])
    return {"validation_images_in_train": sum(split == "validation" for finding in exact if finding["kind"] == LEAKAGE
                                              for split in finding["splits"]),
            "exact_duplicate_groups": len(exact)}


def audit(sources: dict, data_dir: str, output_dir: Path, settings: AuditSettings = AuditSettings(), log=print) -> dict:
    """Audit the splits of `sources` ({"train": source, "validation": source}); write the outputs; the audit.json
    dict."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    hashed = [pair for split, source in sources.items() for pair in hashed_examples(source, split)]
    exact = exact_duplicates(hashed)
    balance, below_floor = class_balance(sources, settings.class_floor)
    findings = [{**finding, "score": None} for finding in exact] + below_floor
    artifacts.write_parquet(output_dir / FINDINGS_FILE, [
        {"kind": finding["kind"], "paths": finding["paths"], "splits": finding["splits"], "classes": finding["classes"],
         "score": finding["score"], "sha256": finding.get("sha256")} for finding in findings])
    counts = {kind: sum(finding["kind"] == kind for finding in exact) for kind in ("leakage", "conflicting_labels",
                                                                                  "redundant_copy")}
    leaking_validation = sum(split == "validation" for finding in exact if finding["kind"] == LEAKAGE
                             for split in finding["splits"])
    report = {"data_dir": storage.display(data_dir), "images": {split: len(source) for split, source in sources.items()},
              "checked": {"exact_duplicates": "SHA-256 of each image's encoded bytes, across and within splits",
                          "class_balance": f"images per class and split; a class below {settings.class_floor:g} x "
                                           "the largest class of its split is flagged"},
              "thresholds": {"class_floor": settings.class_floor},
              "exact_duplicate_groups": counts, "validation_images_also_in_train": leaking_validation,
              "class_balance": balance, "classes_below_floor": [(f["splits"][0], f["classes"][0]) for f in below_floor],
              "outputs": {"findings": FINDINGS_FILE, "exact_duplicates_sheet": EXACT_SHEET}}
    artifacts.write_json(output_dir / AUDIT_FILE, report)
    draw_exact_groups(exact[:settings.sheet_groups], output_dir / EXACT_SHEET, data_dir)
    return report


def draw_exact_groups(groups: list[dict], path: Path, data_dir: str) -> None:
    """The first two copies of each group side by side, captioned with kind, split, class and path (under data_dir)."""
    import tensorflow as tf

    from tl_core.data.images import decode_and_resize

    images, captions = [], []
    for group in groups:
        for index in (0, 1):
            where = group["paths"][index]
            encoded = storage.read_bytes(where) if storage.exists(where) else None
            image = (decode_and_resize(tf.constant(encoded), 128).numpy() / 255.0 if encoded is not None
                     else np.ones((128, 128, 3)))  # a Parquet row: its path names the source file, not this data
            images.append(image)
            captions.append(f"{group['kind']}: {group['splits'][index]}/{group['classes'][index]}\n"
                            f"{wrap(shown(where, data_dir))}")
    artifacts.plot_contact_sheet(images, captions, path, columns=4,
                                 title=f"Exact duplicates: {len(groups)} group(s), first two copies of each side by side")


def shown(path: str, data_dir: str) -> str:
    """A file under the data directory by its path there; anything else as it is."""
    inside = str(path).startswith(str(data_dir).rstrip("/") + "/")
    return storage.relative(path, data_dir) if inside else storage.display(path)


def wrap(text: str, width: int = 40) -> str:
    return "\n".join(text[start:start + width] for start in range(0, len(text), width))


def summary(report: dict, output_dir: Path) -> str:
    """What the audit found, in a few lines, with the path of each output."""
    groups = report["exact_duplicate_groups"]
    lines = [f"Audit of {report['data_dir']} ({', '.join(f'{n} {split}' for split, n in report['images'].items())} images):",
             f"  exact duplicates: {groups['leakage']} group(s) in both train/ and validation/ (leakage: "
             f"{report['validation_images_also_in_train']} validation image(s) also in train/), "
             f"{groups['conflicting_labels']} under conflicting labels, {groups['redundant_copy']} redundant",
             "  class balance: " + "; ".join(f"{split} largest/smallest {values['largest_over_smallest']:.2f}"
                                             for split, values in report["class_balance"].items())
             + (f"; below the floor: {report['classes_below_floor']}" if report["classes_below_floor"] else "")]
    lines += [f"  {name}: {output_dir / file}" for name, file in
              (("summary", AUDIT_FILE), ("findings", FINDINGS_FILE), ("exact duplicates, side by side", EXACT_SHEET))]
    return "\n".join(lines)
