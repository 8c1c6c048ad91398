"""The data audit (`python -m jobs.audit`, and every run with cached features): what a validation score can be trusted
for, checked before trusting it.

Checked: exact duplicates (exact.py: leakage across splits, conflicting labels, redundant copies), class balance
(images per class and split, the largest over the smallest class, classes below a floor) and, given the backbone's
features of every image, near duplicates (near.py) and likely label errors (labels.py). Written into the audit's
directory (a run's: its run directory): audit.json (the counts, the thresholds used, what was checked),
findings.parquet (one row per finding) and a contact sheet per kind of finding (sheets.py).
"""
import dataclasses
from pathlib import Path

import numpy as np

from tl_core import artifacts, storage
from tl_core.audit.exact import LEAKAGE, exact_duplicates, hashed_examples
from tl_core.audit.sheets import draw_exact_groups, draw_label_issues, draw_near_pairs
from tl_core.config import BackbonePass, HeadRecipe, option

AUDIT_FILE = "audit.json"
FINDINGS_FILE = "findings.parquet"
EXACT_SHEET, NEAR_SHEET, LABEL_SHEET = "exact_duplicates.png", "near_duplicates.png", "label_issues.png"
CLASS_BELOW_FLOOR = "class_below_floor"


@dataclasses.dataclass
class AuditSettings:
    class_floor: float = option(0.1, "flag a class with fewer images than this share of its split's largest class")
    near_threshold: float = option(0.97, "cosine similarity of two images' backbone features (centred on their mean) "
                                   "from which they are near duplicates (chosen on planted copies: docs/audit.md)")
    neighbours: int = option(10, "nearest neighbours searched per image", command_line=False)
    label_folds: int = option(5, "folds of the label check's out-of-fold probabilities, over both splits together",
                              command_line=False)
    label_epochs: int = option(10, "epochs of each fold's head", command_line=False)
    sheet_groups: int = option(12, "duplicate groups or pairs drawn in each contact sheet", command_line=False)
    sheet_issues: int = option(16, "label issues drawn", command_line=False)

    def __post_init__(self):
        if not 0 < self.class_floor < 1:
            raise ValueError(f"--class-floor must be between 0 and 1, got {self.class_floor}")
        if not 0 < self.near_threshold <= 1:
            raise ValueError(f"--near-threshold must be in (0, 1], got {self.near_threshold}")


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


def leaking_validation_images(exact: list[dict]) -> int:
    return sum(split == "validation" for finding in exact if finding["kind"] == LEAKAGE for split in finding["splits"])


def leakage(sources: dict, known: dict | None = None) -> dict:
    """What a retrain records of its data (exact duplicates only): the validation images also in train/ and the
    exact-duplicate groups by kind. known: path -> SHA-256 of files hashed already (the retrain's manifest)."""
    exact = exact_duplicates([pair for split, source in sources.items() for pair in hashed_examples(source, split, known)])
    return {"validation_images_in_train": leaking_validation_images(exact), "exact_duplicate_groups": len(exact)}


def backbone_features(backbone: BackbonePass, sources: dict) -> dict:
    """{split: [n, dim] features} of every image, in each source's order: the run's frozen backbone run once."""
    from tl_core.data.features import features_of  # loads TensorFlow: `jobs.audit --exact-only` and --help never do

    computed = features_of(backbone, [(source, f"{split.capitalize()} features") for split, source in sources.items()])
    return {split: features for split, (features, _) in zip(sources, computed)}


def audit_sources(config, sources: dict, data_dir: str, output_dir: Path, settings: AuditSettings = AuditSettings(), *,
               exact_only: bool = False) -> dict:
    """jobs.audit and `jobs.train --check --audit`: the audit of sources, with the backbone's features computed here
    (config: the backbone, image size, batch size and the head's recipe), or without them (exact_only)."""
    features = None if exact_only else backbone_features(config.backbone_pass, sources)
    return audit(sources, data_dir, output_dir, settings, features=features, head=config.head_recipe)


def audit(sources: dict, data_dir: str, output_dir: Path, settings: AuditSettings = AuditSettings(), *,
          features: dict | None = None, head: HeadRecipe | None = None, log=print) -> dict:
    """Audit the splits of `sources` ({"train": source, "validation": source}); write the outputs; the audit.json
    dict. features ({split: [n, dim] backbone features, in the sources' order}) add near duplicates and likely label
    errors, the latter found by heads of that recipe."""
    # TensorFlow and cleanlab (labels.py), faiss (near.py): only with features.
    from tl_core.audit.labels import LABEL_ISSUE, label_issues, out_of_fold_probabilities
    from tl_core.audit.near import NEAR_DUPLICATE, NEAR_LEAKAGE, near_duplicates

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    digests = {split: hashed_examples(source, split) for split, source in sources.items()}
    exact = exact_duplicates([pair for hashed in digests.values() for pair in hashed])
    balance, below_floor = class_balance(sources, settings.class_floor)
    findings = [{**finding, "score": None} for finding in exact] + below_floor
    checked = {"exact_duplicates": "SHA-256 of each image's encoded bytes, across and within splits",
               "class_balance": f"images per class and split; a class below {settings.class_floor:g} x the largest "
                                "class of its split is flagged"}
    counts = {kind: sum(finding["kind"] == kind for finding in exact)
              for kind in ("leakage", "conflicting_labels", "redundant_copy")}
    near, issues = [], []
    if features is not None:
        names = {split: source.names() for split, source in sources.items()}

        def described(finding: dict) -> dict:
            rows = finding["rows"]
            return {**finding, "paths": [names[split][row] for split, row in rows], "splits": [split for split, _ in rows],
                    "classes": [sources[split].class_names[sources[split].labels[row]] for split, row in rows]}

        near = [described(pair) for pair in near_duplicates(
            features, settings.near_threshold, settings.neighbours,
            same_bytes=lambda a, b: digests[a[0]][a[1]][0] == digests[b[0]][b[1]][0])]
        where = [(split, row) for split in sources for row in range(len(sources[split]))]
        labels = np.concatenate([sources[split].labels for split in sources]).astype(np.int64)
        class_names = next(iter(sources.values())).class_names
        probabilities = out_of_fold_probabilities(np.concatenate([features[split] for split in sources]), labels,
                                                  len(class_names), head, settings.label_folds, settings.label_epochs)
        issues = [described({"kind": LABEL_ISSUE, "rows": [where[row]], "score": quality,
                             "suggested_class": class_names[suggested]})
                  for row, suggested, quality in label_issues(labels, probabilities)]
        findings += near + issues
        checked["near_duplicates"] = (f"cosine similarity of the backbone's features, centred on their mean, >= "
                                      f"{settings.near_threshold:g} "
                                      f"(each image's {settings.neighbours} nearest neighbours searched; byte-identical "
                                      "pairs are exact duplicates), across splits and within each split")
        checked["label_issues"] = (f"cleanlab's confident learning on out-of-fold class probabilities: {settings.label_folds}"
                                   f"-fold over both splits, each fold's head trained {settings.label_epochs} epochs on "
                                   "the others' features")
    artifacts.write_parquet(output_dir / FINDINGS_FILE, [
        {"kind": finding["kind"], "paths": finding["paths"], "splits": finding["splits"], "classes": finding["classes"],
         "score": finding["score"], "suggested_class": finding.get("suggested_class"), "sha256": finding.get("sha256")}
        for finding in findings])
    outputs = {"findings": FINDINGS_FILE, "exact_duplicates_sheet": EXACT_SHEET}
    if features is not None:
        outputs.update({"near_duplicates_sheet": NEAR_SHEET, "label_issues_sheet": LABEL_SHEET})
    report = {"data_dir": storage.display(data_dir), "images": {split: len(source) for split, source in sources.items()},
              "checked": checked,
              "thresholds": {"class_floor": settings.class_floor,
                             **({"near_similarity": settings.near_threshold} if features is not None else {})},
              "exact_duplicate_groups": counts, "validation_images_also_in_train": leaking_validation_images(exact),
              "near_duplicate_pairs": ({kind: sum(pair["kind"] == kind for pair in near)
                                        for kind in (NEAR_LEAKAGE, NEAR_DUPLICATE)} if features is not None else None),
              "validation_images_near_train": (len({row for pair in near if pair["kind"] == NEAR_LEAKAGE
                                                    for split, row in pair["rows"] if split == "validation"})
                                               if features is not None else None),
              "label_issues": ({split: sum(issue["splits"][0] == split for issue in issues) for split in sources}
                               if features is not None else None),
              "class_balance": balance, "classes_below_floor": [(f["splits"][0], f["classes"][0]) for f in below_floor],
              "outputs": outputs}
    artifacts.write_json(output_dir / AUDIT_FILE, report)
    draw_exact_groups(exact[:settings.sheet_groups], output_dir / EXACT_SHEET, data_dir)
    if features is not None:
        draw_near_pairs(near[:settings.sheet_groups], sources, output_dir / NEAR_SHEET, data_dir, settings.near_threshold)
        draw_label_issues(issues[:settings.sheet_issues], sources, output_dir / LABEL_SHEET, data_dir)
    return report


def summary(report: dict, output_dir: Path) -> str:
    """What the audit found, in a few lines, with the path of each output."""
    groups = report["exact_duplicate_groups"]
    lines = [f"Audit of {report['data_dir']} ({', '.join(f'{n} {split}' for split, n in report['images'].items())} images):",
             f"  exact duplicates: {groups['leakage']} group(s) in both train/ and validation/ (leakage: "
             f"{report['validation_images_also_in_train']} validation image(s) also in train/), "
             f"{groups['conflicting_labels']} under conflicting labels, {groups['redundant_copy']} redundant"]
    if report["near_duplicate_pairs"] is not None:
        pairs = report["near_duplicate_pairs"]
        lines += [f"  near duplicates (similarity >= {report['thresholds']['near_similarity']:g}): {pairs['near_leakage']} "
                  f"pair(s) across train/ and validation/ ({report['validation_images_near_train']} validation image(s) "
                  f"near a training image), {pairs['near_duplicate']} within a split",
                  "  likely label errors: " + ", ".join(f"{count} in {split}/" for split, count in report["label_issues"].items())]
    lines.append("  class balance: " + "; ".join(f"{split} largest/smallest {values['largest_over_smallest']:.2f}"
                                                for split, values in report["class_balance"].items())
                 + (f"; below the floor: {report['classes_below_floor']}" if report["classes_below_floor"] else ""))
    shown = {"summary": AUDIT_FILE, **report["outputs"]}
    lines += [f"  {name.replace('_', ' ')}: {output_dir / file}" for name, file in shown.items()]
    return "\n".join(lines)


def headline(report: dict, output_dir: Path) -> str:
    """One line for a run's summary: what would change how its score reads, or that the audit found none of it."""
    found = []
    if report["validation_images_also_in_train"]:
        found.append(f"{report['validation_images_also_in_train']} validation image(s) also in train/ (leakage)")
    if report.get("validation_images_near_train"):
        found.append(f"{report['validation_images_near_train']} near a training image")
    if report.get("label_issues") and sum(report["label_issues"].values()):
        found.append(f"{sum(report['label_issues'].values())} likely label error(s)")
    if report["classes_below_floor"]:
        found.append(f"{len(report['classes_below_floor'])} class(es) below the balance floor")
    return "Audit: " + ("; ".join(found) if found else "no leakage, near copies or likely label errors found") + \
        f": see {Path(output_dir) / AUDIT_FILE}"
