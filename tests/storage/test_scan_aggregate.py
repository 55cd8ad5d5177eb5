"""The scanner's numpy aggregation against a plain per-row reference, on random
rows with heavy sharing, unequal sizes, forced 64-bit hash-prefix collisions and
a draft bucket (never an owner of a content another bucket uses)."""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import pytest
from moodleops.exporters.storage_scan import _aggregate, _Columns, _Rows

NBUCKETS = 7


DRAFT = 2


class Seen:
    """Stands in for the contents file: records the contents in the order given."""

    def __init__(self) -> None:
        self.hashes: list[tuple[str, int]] = []

    def __call__(self, h0: np.ndarray, h1: np.ndarray, h2: np.ndarray, size: np.ndarray) -> None:
        raw = np.empty(len(size), dtype=[("a", ">u8"), ("b", ">u8"), ("c", ">u4")])
        raw["a"], raw["b"], raw["c"] = h0, h1, h2
        text = raw.tobytes().hex()
        self.hashes += [(text[40 * i:40 * i + 40], int(s)) for i, s in enumerate(size.tolist())]


def reference(rows: list[tuple[str, int, int]], draft: int = -1) -> tuple[dict[str, list[int]], dict[str, int], int]:
    """Per-bucket figures the slow, obvious way (the scanner's former per-row algorithm)."""
    groups: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for h, size, rank in rows:
        groups[h].append((size, rank))
    out = {k: [0] * NBUCKETS for k in ("files", "logical", "unique", "exclusive", "apportioned")}
    for _, size, rank in rows:
        out["files"][rank] += 1
        out["logical"][rank] += size
    blobs: dict[str, int] = {}
    inconsistent = 0
    for h, members in groups.items():
        smax = max(s for s, _ in members)
        inconsistent += smax != min(s for s, _ in members)
        blobs[h] = smax
        every = sorted({r for _, r in members})
        for r in every:
            out["unique"][r] += smax
        # The owners: every bucket but the drafts, unless only drafts hold the content.
        ranks = [r for r in every if r != draft] or every
        share, extra = divmod(smax, len(ranks))
        for i, r in enumerate(ranks):
            out["apportioned"][r] += share + (1 if i < extra else 0)
            if len(ranks) == 1:
                out["exclusive"][r] += smax
    return out, blobs, inconsistent


def as_rows(rows: list[tuple[str, int, int]]) -> _Rows:
    raw = np.frombuffer(bytes.fromhex("".join(h for h, _, _ in rows)), dtype=[("a", ">u8"), ("b", ">u8"),
                                                                             ("c", ">u4")])
    return _Rows(raw["a"].astype(np.uint64), raw["b"].astype(np.uint64), raw["c"].astype(np.uint32),
                 np.array([s for _, s, _ in rows], dtype=np.int64), np.array([r for _, _, r in rows], dtype=np.int32))


@pytest.mark.parametrize("draft", [-1, DRAFT])
@pytest.mark.parametrize("collide", [False, True])
def test_numpy_aggregation_equals_the_per_row_reference(collide: bool, draft: int) -> None:
    rnd = random.Random(5 + collide)
    hashes = [f"{rnd.getrandbits(160):040x}" for _ in range(3000)]
    if collide:   # same first 16 hex digits, different contents: must stay distinct
        prefix = hashes[0][:16]
        hashes[1:40] = [prefix + h[16:] for h in hashes[1:40]]
        hashes[40:60] = [hashes[40][:32] + h[32:] for h in hashes[40:60]]
    sizes = {h: rnd.choice([1, 2, 3, 7, 10**9 + 7, rnd.randrange(1, 10**7)]) for h in hashes}
    rows = []
    for _ in range(20000):
        h = rnd.choice(hashes[:200]) if rnd.random() < 0.3 else rnd.choice(hashes)
        size = sizes[h] + (1 if rnd.random() < 0.001 else 0)   # a few inconsistent rows
        rows.append((h, size, rnd.randrange(NBUCKETS)))
    want, blobs, inconsistent = reference(rows, draft)
    seen = Seen()
    agg = _aggregate(as_rows(rows), NBUCKETS, seen, draft=draft)
    got = {"files": agg.files, "logical": agg.logical, "unique": agg.unique, "exclusive": agg.exclusive,
           "apportioned": agg.apportioned}
    assert {k: [int(x) for x in v] for k, v in got.items()} == want
    assert agg.inconsistent == inconsistent
    assert int(agg.apportioned.sum()) == int(agg.blob_size.sum()) == sum(blobs.values())
    assert seen.hashes == sorted(blobs.items())


def test_no_rows() -> None:
    empty = _Rows(np.empty(0, np.uint64), np.empty(0, np.uint64), np.empty(0, np.uint32), np.empty(0, np.int64),
                  np.empty(0, np.int32))
    seen = Seen()
    agg = _aggregate(empty, NBUCKETS, seen, draft=DRAFT)
    assert agg.files.tolist() == [0] * NBUCKETS and agg.apportioned.sum() == 0
    assert seen.hashes == []


def test_a_draft_copy_never_takes_exclusivity_away() -> None:
    """A school's file and the draft copy an edit form made of it: the school keeps it
    exclusive and whole; a content only in a draft is the draft bucket's own."""
    own, draft_only = "ab" * 20, "cd" * 20
    rows = [(own, 1000, 0), (own, 1000, DRAFT), (draft_only, 7, DRAFT)]
    agg = _aggregate(as_rows(rows), NBUCKETS, draft=DRAFT)
    assert (int(agg.exclusive[0]), int(agg.apportioned[0]), int(agg.unique[0])) == (1000, 1000, 1000)
    assert (int(agg.exclusive[DRAFT]), int(agg.apportioned[DRAFT]), int(agg.unique[DRAFT])) == (7, 7, 1007)


def test_columns_grow_past_a_low_estimate() -> None:
    cols = _Columns(2)
    parts = [tuple(np.arange(k + i, dtype=t) for t in (">u8", ">u8", ">u4", ">i8", np.int32)) for i, k in
             enumerate((3, 5, 1))]
    for p in parts:
        cols.add(p)
    rows = cols.rows()
    assert rows.h0.dtype == np.uint64 and rows.size.dtype == np.int64
    assert rows.h0.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5, 0, 1, 2] == rows.rank.tolist()
