"""Trains (or resumes) one run in a process of its own, for the crash tests: the fake encoders and the scripted
validation of ``test_engine_crash_safety`` put in place, then ``MultimodalClassifier(CONFIG).fit()`` or, with
``--resume RUN``, ``MultimodalClassifier.resume(RUN)``. ``MMFUSE_FAULT`` (test-only) ends it at a step of the epoch
commit.

Usage: ``python tests/engine/_crash_train.py CONFIG.yaml`` or ``python tests/engine/_crash_train.py --resume RUN``
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(args: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _engine_support import build_fake_image, build_fake_text, scripted_validate

    import mmfuse.encoders
    from mmfuse.engine.classifier import MultimodalClassifier
    from mmfuse.engine.trainer import Trainer

    mmfuse.encoders.build_text_encoder = build_fake_text
    mmfuse.encoders.build_image_encoder = build_fake_image
    Trainer._validate = scripted_validate(Trainer._validate)
    if args[0] == "--resume":
        MultimodalClassifier.resume(args[1])
    else:
        MultimodalClassifier(args[0]).fit()


if __name__ == "__main__":
    main(sys.argv[1:])
