"""Child process of the peak-memory benchmark: build a model, then load one checkpoint into it.

Protocol on stdout/stdin, driven by run.py: after building the model (and resetting the RSS
high-water mark) print ``ready <status json>``, wait for a line on stdin, load, print
``done <status json>``. The parent samples /proc/<pid>/status meanwhile for the anonymous peak.

    python benchmarks/peak_child.py METHOD PATH TARGET_BYTES
"""

from __future__ import annotations

import contextlib
import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import build_model, proc_status
from safetensors.torch import load_file, load_model

from modelrows import Catalog, load_weights, read_model_row


def load(method: str, path: str, model: torch.nn.Module) -> None:
    if method == "modelrows":
        load_weights(model, read_model_row(path).weights)
    elif method == "catalog":
        root, row_id = path.rsplit("#", 1)
        load_weights(model, Catalog.open(root).get(row_id).weights)
    elif method == "safetensors.load_model":
        load_model(model, path)
    elif method == "safetensors.load_file":
        model.load_state_dict(load_file(path))
    elif method == "torch.load(mmap)":
        model.load_state_dict(torch.load(path, mmap=True, weights_only=True))
    elif method == "torch.load":
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        raise SystemExit(f"unknown method {method!r}")


def main() -> None:
    method, path, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = build_model(target, seed=1)
    gc.collect()
    with contextlib.suppress(OSError):  # reset VmHWM to the current RSS: the peak is the load's
        Path("/proc/self/clear_refs").write_text("5")
    print("ready", json.dumps(proc_status()), flush=True)
    sys.stdin.readline()
    load(method, path, model)
    print("done", json.dumps(proc_status()), flush=True)


if __name__ == "__main__":
    main()
