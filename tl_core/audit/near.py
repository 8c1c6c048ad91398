"""Near duplicates: pairs of images whose backbone features point the same way (cosine similarity at or above a
threshold), found by a nearest-neighbour search: a copy that was resized, re-encoded or lightly edited.

The features are centred on their mean over the audited images first. A frozen backbone's pooled features are
non-negative, so the raw vectors of any two images lie in a narrow cone (on the built-in sample most pairs of
different images are above 0.9); centred, they spread out, and the same recall of planted copies comes with far fewer
wrong pairs (benchmarks/audit.py sweeps both).

The search is exact (faiss's flat inner-product index over L2-normalised features) and runs in chunks of query rows,
so memory grows with the number of images, not with its square: the features, plus chunk x neighbours results.
A pair in train/ and validation/ is near_leakage; a pair within one split is near_duplicate (its classes may differ).
"""
import numpy as np

NEAR_LEAKAGE, NEAR_DUPLICATE = "near_leakage", "near_duplicate"
CHUNK_ROWS = 4096


def normalised(features: np.ndarray) -> np.ndarray:
    features = np.ascontiguousarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def similar_pairs(features: np.ndarray, threshold: float, neighbours: int) -> list[tuple[int, int, float]]:
    """(i, j, cosine similarity) with i < j for every row j among row i's `neighbours` nearest (or i among j's) at or
    above threshold, most similar first."""
    import faiss  # imported here: only the audit needs it

    unit = normalised(features)
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    found = {}
    for start in range(0, len(unit), CHUNK_ROWS):
        similarity, rows = index.search(unit[start:start + CHUNK_ROWS], min(neighbours + 1, len(unit)))
        queries = np.arange(start, start + len(rows))[:, None]
        for query, column in zip(*np.nonzero((similarity >= threshold) & (rows >= 0) & (rows != queries))):
            i, j = start + int(query), int(rows[query, column])
            found[(min(i, j), max(i, j))] = min(float(similarity[query, column]), 1.0)
    return sorted(((i, j, score) for (i, j), score in found.items()), key=lambda pair: (-pair[2], pair[0], pair[1]))


def near_duplicates(features: dict, threshold: float, neighbours: int = 10, same_bytes=None) -> list[dict]:
    """Findings for near-identical pairs among the splits' features ({split: [n, dim] array}): kind, the two
    (split, row) and the similarity (of the centred features) as score. same_bytes(a, b): True when (split, row) a and
    b are byte-identical (an exact duplicate, reported as such and not again here)."""
    splits = list(features)
    where = [(split, row) for split in splits for row in range(len(features[split]))]
    stacked = np.concatenate([features[split] for split in splits]).astype(np.float32)
    stacked -= stacked.mean(axis=0)  # in place: at 100k images each copy of the features is 0.5 GB
    pairs = similar_pairs(stacked, threshold, neighbours)
    findings = []
    for i, j, score in pairs:
        a, b = where[i], where[j]
        if same_bytes is not None and same_bytes(a, b):
            continue
        findings.append({"kind": NEAR_LEAKAGE if a[0] != b[0] else NEAR_DUPLICATE, "rows": [a, b], "score": score})
    return findings
