"""The weights checksum of docs/format.md, computed independently of modelrows' own code."""

from __future__ import annotations

import torch
import xxhash

from modelrows import Weights


def reference_checksum(w: Weights) -> str:
    """XXH3-64 (seed 0) of every distinct tensor's bytes in entry order, tied tensors once."""
    h = xxhash.xxh3_64()
    seen: set[tuple[int, int]] = set()
    for e in w.entries:
        if e.nbytes and (e.offset, e.nbytes) not in seen:
            seen.add((e.offset, e.nbytes))
            t = w[e.name].resolve_conj().resolve_neg().contiguous()
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"xxh3-64:{h.hexdigest()}"
