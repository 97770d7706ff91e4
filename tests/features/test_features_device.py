"""Computing features on a device leaves the encoder's weights ordinary tensors (not inference tensors)."""

from __future__ import annotations

import torch

from _tiny import tiny_text_encoder
from mmfuse.data import Example
from mmfuse.features import compute_features


def test_weights_moved_to_the_device_stay_usable_after_computing_features() -> None:
    # accelerate's device in a multi-process CPU run is cpu:0: moving the weights there inside inference mode made
    # them inference tensors, which the encoder's fingerprint (cache key), DDP's broadcast and training cannot touch
    encoder = tiny_text_encoder()
    encoder.freeze()
    examples = [Example(id=str(i), text=f"a cat and a dog {i}", image=None) for i in range(3)]
    before = encoder.cache_identity()
    table = compute_features(encoder, examples, need_sequence=False, device=torch.device("cpu", 0), backend="torch")
    assert len(table) == 3
    assert not any(p.is_inference() for p in encoder.parameters())
    assert encoder.cache_identity() == before  # the fingerprint reads each weight's version counter
