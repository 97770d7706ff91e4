"""Trains one run from a YAML config with the fake encoders of the engine tests, in a process started by a
launcher (``torch.distributed.run``, which ``accelerate launch`` also uses): the ``fake_encoders`` fixture only
patches the test process, so a launched process puts the fakes behind the builder names itself.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/engine/_launch_train.py CONFIG.yaml``
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(config: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _engine_support import build_fake_image, build_fake_text

    import mmfuse.encoders
    from mmfuse.config import load_config
    from mmfuse.data import load_splits
    from mmfuse.engine.trainer import Trainer

    mmfuse.encoders.build_text_encoder = build_fake_text
    mmfuse.encoders.build_image_encoder = build_fake_image
    cfg = load_config(config)
    splits = load_splits(cfg.data)
    Trainer(cfg, splits["train"].examples, splits["val"].examples).fit()


if __name__ == "__main__":
    main(sys.argv[1])
