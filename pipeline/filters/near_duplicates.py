"""Near-duplicate clips by perceptual hash, within and across videos, without comparing all pairs.

Exact duplicates need nothing here: `video_id` is the content hash, so the same file under two
names is ingested once. Near duplicates (a re-encode, a resize, the same footage in two uploads)
are found from each clip's few frame pHashes (`phash` column, 64 bits each):

1. Candidate frame pairs come from multi-index hashing (Norouzi et al., 2012): each hash is cut
   into `bands` bands; if two hashes differ in at most `hamming` bits, then by pigeonhole at least
   one band differs in at most r = hamming // bands bits. Every hash is looked up, band by band,
   among the hashes whose band value is within r bits of its own (sorted arrays + binary search,
   all in numpy). No all-pairs comparison: the work is ~ (hashes) x (bands x probes) x (bucket
   size), and a bucket holds ~ hashes / 2^(64 / bands) unrelated entries.
2. Candidates are verified with the full 64-bit Hamming distance.
3. Two clips are near duplicates when at least `min_matching_frames` of their hashed frames (or
   all of them, for clips with fewer) have a partner within `hamming` bits in the other clip,
   counted on both sides.
4. Near-duplicate pairs are joined into groups (connected components: A~B and B~C put A, B, C in
   one group). Each group keeps its best member by the rank the caller gives (see
   `pipeline.library.views.keep_best_rank`: passes the filters, higher aesthetic, more pixels, sharper,
   longer, clip_id); every other member records `duplicate_of` = that member.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DENSE_BAND_BITS = 22  # bands up to this wide are looked up in a dense table, wider ones by binary search


def band_layout(bands: int) -> list[tuple[int, int]]:
    """(shift, width) of each band of a 64-bit hash, widths as equal as possible."""
    widths = [64 // bands + (1 if i < 64 % bands else 0) for i in range(bands)]
    shifts = list(np.cumsum([0] + widths[:-1]))
    return [(int(s), w) for s, w in zip(shifts, widths)]


def flip_masks(width: int, radius: int) -> np.ndarray:
    """Every XOR mask of at most `radius` set bits within a `width`-bit band."""
    masks = [0]
    for r in range(1, radius + 1):
        masks += [sum(1 << b for b in bits) for bits in combinations(range(width), r)]
    return np.array(masks, np.uint64)


def similar_hash_pairs(hashes: np.ndarray, owner: np.ndarray, hamming: int, bands: int,
                       allowed=None) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) with owner[i] < owner[j] and Hamming(hashes[i], hashes[j]) <= hamming.

    `allowed(i, j) -> bool mask` can drop candidate pairs before verification (e.g. same video).
    """
    radius = hamming // bands
    n = len(hashes)
    found_i, found_j = [], []
    layout = band_layout(bands)
    for band, (shift, width) in enumerate(layout):
        keys = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(keys, kind="stable")
        position = np.empty(n, np.int64)
        position[order] = np.arange(n)
        if width <= DENSE_BAND_BITS:  # bucket table: start and size of every possible band value
            size = np.bincount(keys.astype(np.int64), minlength=1 << width)
            first = np.cumsum(size) - size
        else:
            sorted_keys = keys[order]
        for mask in flip_masks(width, radius):
            # each unordered pair once: same bucket -> only partners sorted after i; otherwise
            # only from the side whose lowest flipped bit is 0 (exactly one side of a pair is)
            src = np.arange(n) if mask == 0 else np.flatnonzero((keys & (mask & ~(mask - np.uint64(1)))) == 0)
            query = keys[src] ^ mask
            if width <= DENSE_BAND_BITS:
                q = query.astype(np.int64)
                lo, counts = first[q], size[q]
            else:
                lo = np.searchsorted(sorted_keys, query, side="left")
                counts = np.searchsorted(sorted_keys, query, side="right") - lo
            if mask == 0:
                counts = lo + counts - position[src] - 1
                lo = position[src] + 1
            total = int(counts.sum())
            if total == 0:
                continue
            i = np.repeat(src, counts)
            within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
            j = order[np.repeat(lo, counts) + within]
            keep = owner[i] != owner[j]
            if allowed is not None:
                keep &= allowed(i, j)
            i, j = i[keep], j[keep]
            x = hashes[i] ^ hashes[j]
            close = np.bitwise_count(x) <= hamming
            # each pair once: from the first band within `radius` of it (an earlier band found it
            # too otherwise), so a cluster of near copies is not 4 times its pairs to sort
            for s2, w2 in layout[:band]:
                close &= np.bitwise_count((x >> np.uint64(s2)) & np.uint64((1 << w2) - 1)) > radius
            i, j = i[close], j[close]
            swap = owner[i] > owner[j]
            found_i.append(np.where(swap, j, i))
            found_j.append(np.where(swap, i, j))
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pair = sorted_unique(np.concatenate(found_i).astype(np.int64) * n + np.concatenate(found_j))
    return pair // n, pair % n


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """`np.unique(x)` of a 1-D array, by one sort: numpy 2.3+ answers a plain `np.unique` from a
    hash table, ~20x slower than sorting here (6M int64: 7.4 s against 0.38 s on numpy 2.4)."""
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]] if x.size else x


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each of `n` nodes, the lowest node of its connected component under the edges (a, b):
    labels lowered along the edges and through each other until nothing changes, all in numpy (a
    union-find in Python took ~2 us an edge, and a cluster of k near copies has k^2 / 2 edges)."""
    label = np.arange(n)
    while True:
        low = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


def near_duplicates(phash: pa.ChunkedArray | pa.Array, video_id: pa.ChunkedArray | pa.Array,
                    rank: np.ndarray, cfg) -> np.ndarray:
    """For each clip, the index of the group member it duplicates, or -1 (kept / unique).

    `phash`: list<uint64> per clip; `rank`: lower is better (keep-best rule); `cfg`: DedupConfig.
    """
    n = len(rank)
    dup_of = np.full(n, -1, np.int64)
    lists = phash.combine_chunks() if isinstance(phash, pa.ChunkedArray) else phash
    lists = pc.fill_null(lists, pa.scalar([], lists.type))
    hashes = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.uint64)
    if hashes.size == 0:
        return dup_of
    owner = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    n_hashes = pc.list_value_length(lists).to_numpy(zero_copy_only=False)

    codes = None
    if not cfg.within_video:
        codes = pc.dictionary_encode(video_id).combine_chunks().indices.to_numpy() \
            if isinstance(video_id, pa.ChunkedArray) else pc.dictionary_encode(video_id).indices.to_numpy()
    # clips with the same hashes (black or blank shots, a channel's intro, a slate) are one class:
    # only its first member is searched, so k such clips cost k, not k^2 candidate pairs
    rep = same_hashes(hashes, owner, n, codes)
    searched = (rep == np.arange(n))[owner]
    hashes, owner = hashes[searched], owner[searched]
    allowed = None
    if codes is not None:
        allowed = lambda i, j: codes[owner[i]] != codes[owner[j]]  # noqa: E731
    i, j = similar_hash_pairs(hashes, owner, cfg.hamming, cfg.bands, allowed)

    # matched frames per clip pair, counted on each side
    a, b = owner[i], owner[j]
    # (frame, the other clip) once each: a frame matching two of the other clip's counts once
    frame_a = sorted_unique(i * n + b)
    frame_b = sorted_unique(j * n + a)
    keys_a, count_a = np.unique(owner[frame_a // n] * n + frame_a % n, return_counts=True)
    keys_b, count_b = np.unique(frame_b % n * n + owner[frame_b // n], return_counts=True)
    assert np.array_equal(keys_a, keys_b)
    ca, cb = keys_a // n, keys_a % n
    need = np.minimum(cfg.min_matching_frames, np.minimum(n_hashes[ca], n_hashes[cb]))
    dup = (count_a >= need) & (count_b >= need)
    ca, cb = ca[dup], cb[dup]

    # a class's other members: duplicates of its first (every frame matches at distance 0), and
    # across videos only (`within_video: false`, a class is one video's) when the first has any
    members = np.flatnonzero((rep != np.arange(n)) & (n_hashes > 0))
    if codes is not None:
        members = members[np.isin(rep[members], np.concatenate([ca, cb]))]
    ca, cb = np.concatenate([ca, rep[members]]), np.concatenate([cb, members])
    if ca.size == 0:
        return dup_of

    root = components(n, ca, cb)
    grouped = sorted_unique(np.concatenate([ca, cb]))
    roots = root[grouped]
    order = np.lexsort((rank[grouped], roots))            # by group, the best ranked first
    grouped, roots = grouped[order], roots[order]
    first = np.r_[True, roots[1:] != roots[:-1]]
    best = grouped[first][np.cumsum(first) - 1]
    dup_of[grouped[~first]] = best[~first]
    return dup_of


def same_hashes(hashes: np.ndarray, owner: np.ndarray, n: int, codes: np.ndarray | None) -> np.ndarray:
    """For each of `n` clips, the first clip with the same multiset of hashes (and, when `codes`
    is given, the same video): itself when it is the first. `owner` is sorted (list order)."""
    order = np.lexsort((hashes, owner))
    flat = hashes[order]
    bounds = np.searchsorted(owner, np.arange(n + 1))
    rep = np.arange(n)
    first: dict[bytes, int] = {}
    for c in range(n):
        key = flat[bounds[c]:bounds[c + 1]].tobytes()
        if codes is not None:
            key += int(codes[c]).to_bytes(8, "little")
        rep[c] = first.setdefault(key, c)
    return rep
