"""Whether a challenger replaces the champion (jobs.retrain), and why: both models evaluated on the same held-out
images, three conditions, each of which must hold.

1. It is better by at least `min_improvement` in `metric` (balanced accuracy by default: on a balanced held-out split
   it equals accuracy, and on an imbalanced one a majority class cannot hide a class the model has lost).
2. It is better beyond chance: McNemar's exact test on the images exactly one of the two models gets right (b of them
   right only by the challenger, c only by the champion; one-sided binomial test of b in b + c at 1/2), p <=
   `significance`. On 600 images, a gain of 0.01 is 6 images: noise, unless few images change sides.
3. No class loses more than `max_class_drop` of recall against the champion, counted for the classes with at least
   `min_class_images` held-out images (with 20, one image is at most 0.05 of a class's recall; a smaller class cannot
   tell a drop from noise, and is not gated).
"""
import dataclasses

import numpy as np

from tl_core.config import option
from tl_core.metrics import SCORES


@dataclasses.dataclass(frozen=True)
class PromotionRule:
    metric: str = option("balanced_accuracy", "what the challenger must improve on the held-out images",
                         flag="--promote-metric", choices=SCORES)
    min_improvement: float = option(0.01, "by at least this much")
    significance: float = option(0.05, "and beyond chance: McNemar's exact test on the images only one of the two "
                                 "models gets right, p at most this (1 turns the test off)")
    max_class_drop: float = option(0.05, "and no class loses more recall than this against the champion, counted for "
                                   "classes with at least --min-class-images held-out images")
    min_class_images: int = option(20, "classes with fewer held-out images are not gated (with 20, one image is at most "
                                   "0.05 of a class's recall)")

    def __post_init__(self):
        if self.metric not in SCORES:
            raise ValueError(f"--promote-metric must be one of {', '.join(SCORES)}, got {self.metric!r}")
        if not 0 < self.significance <= 1:
            raise ValueError(f"--significance must be in (0, 1], got {self.significance}")
        if self.max_class_drop < 0 or self.min_class_images < 1:
            raise ValueError("--max-class-drop must not be negative and --min-class-images must be at least 1")


@dataclasses.dataclass
class Decision:
    promote: bool
    reason: str
    p_value: float | None = None  # McNemar's, when there was a champion to compare with
    worst_class: str | None = None  # the gated class that lost the most recall
    worst_class_drop: float | None = None  # its champion recall minus its challenger recall


def mcnemar(challenger_right: np.ndarray, champion_right: np.ndarray) -> tuple[int, int, float]:
    """(b, c, p): images right only by the challenger, only by the champion, and the one-sided exact p-value that the
    challenger is better (1.0 when no image changes sides)."""
    from scipy.stats import binomtest  # scipy only for a decision: `jobs.retrain --help` loads none

    b = int(np.sum(challenger_right & ~champion_right))
    c = int(np.sum(~challenger_right & champion_right))
    return b, c, float(binomtest(b, b + c, 0.5, alternative="greater").pvalue) if b + c else 1.0


def worst_drop(challenger: dict, champion: dict, min_images: int) -> tuple[str, float, float, float] | None:
    """(class, champion recall, challenger recall, drop) of the gated class that lost the most recall; None if no
    class has min_images held-out images."""
    recall = {row["class"]: row["recall"] for row in challenger["per_class"]}
    gated = [(row["class"], row["recall"], recall[row["class"]], row["recall"] - recall[row["class"]])
             for row in champion["per_class"] if row["support"] >= min_images and row["class"] in recall]
    return max(gated, key=lambda entry: entry[3]) if gated else None


def decide(challenger: dict, champion: dict | None, rule: PromotionRule, *, challenger_right: np.ndarray | None = None,
           champion_right: np.ndarray | None = None) -> Decision:
    """The decision from the two models' metrics on the same held-out images and, per image, whether each got it
    right (in the same order)."""
    if champion is None:
        return Decision(True, "no champion yet")
    name = rule.metric
    gain = challenger[name] - champion[name]
    b, c, p_value = mcnemar(np.asarray(challenger_right, bool), np.asarray(champion_right, bool))
    worst = worst_drop(challenger, champion, rule.min_class_images)
    gain_text = (f"{name} {challenger[name]:.4f} vs champion {champion[name]:.4f}: {gain:+.4f} "
                 f"{'>=' if gain >= rule.min_improvement else '<'} required {rule.min_improvement:+.4f}")
    chance_text = (f"McNemar: {b} image(s) right only by the challenger, {c} only by the champion, p={p_value:.3g} "
                   f"{'<=' if p_value <= rule.significance else '>'} {rule.significance:g}")
    failed = []
    if gain < rule.min_improvement:
        failed.append(gain_text)
    if p_value > rule.significance:
        failed.append(f"not better beyond chance ({chance_text})")
    if worst and worst[3] > rule.max_class_drop:
        failed.append(f"class {worst[0]!r} would lose {worst[3]:.4f} of recall ({worst[1]:.4f} -> {worst[2]:.4f}), "
                      f"more than {rule.max_class_drop:g}")
    decision = Decision(not failed, "", p_value, worst and worst[0], worst and worst[3])
    if failed:
        decision.reason = "; ".join(failed)
    else:
        lost = f"; worst class {worst[0]!r} {-worst[3]:+.4f} of recall" if worst else ""
        decision.reason = f"{gain_text}; {chance_text}{lost}"
    return decision
