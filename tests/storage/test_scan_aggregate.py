"""The scanner's numpy aggregation against a plain per-row reference, on random
rows with heavy sharing, unequal sizes and forced 64-bit hash-prefix collisions."""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import pytest
from moodleops.exporters.storage_scan import _aggregate, _Columns, _Rows

NBUCKETS = 7


class Seen:
    """Stands in for the filedir merge: records the contents in the order given."""

    def __init__(self) -> None:
        self.hashes: list[tuple[str, int]] = []

    def see(self, contenthash: str, size: int) -> None:
        self.hashes.append((contenthash, size))


def reference(rows: list[tuple[str, int, int]]) -> tuple[dict[str, list[int]], dict[str, int], int]:
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
        ranks = sorted({r for _, r in members})
        share, extra = divmod(smax, len(ranks))
        for i, r in enumerate(ranks):
            out["unique"][r] += smax
            out["apportioned"][r] += share + (1 if i < extra else 0)
            if len(ranks) == 1:
                out["exclusive"][r] += smax
    return out, blobs, inconsistent


def as_rows(rows: list[tuple[str, int, int]]) -> _Rows:
    raw = np.frombuffer(bytes.fromhex("".join(h for h, _, _ in rows)), dtype=[("a", ">u8"), ("b", ">u8"),
                                                                             ("c", ">u4")])
    return _Rows(raw["a"].astype(np.uint64), raw["b"].astype(np.uint64), raw["c"].astype(np.uint32),
                 np.array([s for _, s, _ in rows], dtype=np.int64), np.array([r for _, _, r in rows], dtype=np.int32))


@pytest.mark.parametrize("collide", [False, True])
def test_numpy_aggregation_equals_the_per_row_reference(collide: bool) -> None:
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
    want, blobs, inconsistent = reference(rows)
    seen = Seen()
    agg = _aggregate(as_rows(rows), NBUCKETS, seen)   # type: ignore[arg-type]
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
    agg = _aggregate(empty, NBUCKETS, seen)   # type: ignore[arg-type]
    assert agg.files.tolist() == [0] * NBUCKETS and agg.apportioned.sum() == 0
    assert seen.hashes == []


def test_columns_grow_past_a_low_estimate() -> None:
    cols = _Columns(2)
    parts = [tuple(np.arange(k + i, dtype=t) for t in (">u8", ">u8", ">u4", ">i8", np.int32)) for i, k in
             enumerate((3, 5, 1))]
    for p in parts:
        cols.add(p)
    rows = cols.rows()
    assert rows.h0.dtype == np.uint64 and rows.size.dtype == np.int64
    assert rows.h0.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5, 0, 1, 2] == rows.rank.tolist()
