"""One process of several filling one feature cache together (``FeatureCache.across``), started by the tests of
``test_cache_peers.py`` (by ``torch.distributed.run``, what ``accelerate launch`` starts, or as plain processes with
``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set).

Usage: ``python _peers_fill.py OUT CACHE DATA_ROOT TEXT_DIR IMAGE_DIR [MODE]``. Each process encodes the training
split's texts and images (sequences, grids) with the tiny encoders in ``TEXT_DIR`` / ``IMAGE_DIR`` into the cache
folder ``CACHE`` (shards of 8 inputs), then writes to ``OUT``: ``rank<r>-<modality>.safetensors`` (its table),
``rank<r>.json`` (its cache statistics and, counted by a forward hook, the inputs each encoder ran on).

``MODE`` (default ``fill``): ``die`` / ``hang``: process 1 exits / sleeps 15 s at its second encoder batch, and
the others must stop with a ``PeerError`` (exit status 5, the message on stderr) within ``MMFUSE_PEER_TIMEOUT``;
``apart``: each process has a cache folder of its own (``CACHE-<rank>``: not shared), so each must encode the
others' inputs too, and say so. ``onnx``: the encoders' default backend ``auto`` with ``AUTO_MIN_INPUTS`` lowered to
30 (the job's 40-odd distinct inputs reach it, one process's share does not) and onnxruntime counted as the faster
(the speed check on 4 inputs is not what this mode tests), the ``mmfuse.features`` log on stderr (debug lines
too); ``onnx-fail``: the same, but process 0's exports fail (process 1's would not); ``onnx-crash``: process 0's
export raises an error that is not the backend's (a bug). ``mismatch``:
process 1 asks for the validation split instead of the training split.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main(out: str, cache: str, data_root: str, text_dir: str, image_dir: str, mode: str = "fill") -> int:
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    from mmfuse.cache import FeatureCache, PeerError, TorchPeers
    from mmfuse.data import DataConfig, load_splits
    from mmfuse.encoders import build_image_encoder, build_text_encoder

    torch.set_num_threads(1)
    if mode in ("onnx", "onnx-fail", "onnx-crash"):
        import logging

        from mmfuse.encoders.runtime import BackendError, OnnxEncoder
        from mmfuse.features import compute

        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
        logging.getLogger("mmfuse.features").setLevel(logging.DEBUG)
        compute.AUTO_MIN_INPUTS = 30
        compute._seconds = lambda run, inputs: 0.0 if isinstance(run, OnnxEncoder) else 1.0
        if mode in ("onnx-fail", "onnx-crash") and int(os.environ["RANK"]) == 0:

            def refuse(self, encoder, named) -> None:
                if mode == "onnx-crash":
                    raise RuntimeError("a bug in the export (a test)")
                raise BackendError(f"the export of {encoder.name} was refused (a test)")

            OnnxEncoder._export = refuse
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    split = "val" if mode == "mismatch" and rank == 1 else "train"
    examples = load_splits(DataConfig(root=data_root, preset="hateful_memes"))[split].examples
    encoders = {"text": build_text_encoder(text_dir), "image": build_image_encoder(image_dir)}
    ran: dict[str, int] = {"text": 0, "image": 0}  # inputs each encoder ran on in this process
    for modality, encoder in encoders.items():
        encoder.freeze()

        def count(module, args, output, modality=modality) -> None:
            ran[modality] += int(output.pooled.shape[0])
            if rank == 1 and mode in ("die", "hang") and ran[modality] > 8:  # process 1's second batch
                if mode == "die":
                    os._exit(3)
                time.sleep(15)

        encoder.register_forward_hook(count)
    if mode == "apart":
        cache = f"{cache}-{rank}"
    cache = FeatureCache(cache, shard_examples=8, encode_workers=0).across(TorchPeers(rank, world))
    try:
        for modality, encoder in encoders.items():
            table = cache.get(encoder, examples, need_sequence=True, batch_size=8)
            tensors = {"pooled": table.pooled, "values": table.values, "valid": table.valid, "offsets": table.offsets}
            if table.present is not None:
                tensors["present"] = table.present
            path = Path(out) / f"rank{rank}-{modality}.safetensors"
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    except PeerError as e:
        print(f"PeerError: {e}", file=sys.stderr, flush=True)
        return 5
    record = {"rank": rank, "pid": os.getpid(), "ran": ran, "stats": cache.stats.as_dict()}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
