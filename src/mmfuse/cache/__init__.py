"""The persistent feature cache: outputs of frozen encoders computed once, stored on disk, reused by every run.

::

    from mmfuse.cache import FeatureCache, feature_source
    source = feature_source()                  # FeatureCache at cache.dir / $MMFUSE_CACHE_DIR / ~/.cache/mmfuse
    clf = MultimodalClassifier(config, source=source)

Entries are keyed by the encoder's ``cache_identity()`` (weights and preprocessing) and by each input's content (the
image file's bytes, the text), so a second run, another head, other hyperparameters or a sweep reuse them. Names
load on first use, so ``mmfuse cache ls`` does not import torch.
"""

from __future__ import annotations

from mmfuse._lazy import lazy_exports

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "CACHE_DIR_ENV": "mmfuse.cache.location",
    "default_cache_dir": "mmfuse.cache.location",
    "resolve_cache_dir": "mmfuse.cache.location",
    "CachedEncoder": "mmfuse.cache.inventory",
    "clear_cache": "mmfuse.cache.inventory",
    "list_cache": "mmfuse.cache.inventory",
    "CorruptShardError": "mmfuse.cache.shards",
    "PeerError": "mmfuse.cache.peers",
    "Peers": "mmfuse.cache.peers",
    "TorchPeers": "mmfuse.cache.peers",
    "CacheStats": "mmfuse.cache.source",
    "CacheStorage": "mmfuse.cache.source",
    "FeatureCache": "mmfuse.cache.source",
    "feature_source": "mmfuse.cache.source",
    "source_for": "mmfuse.cache.source",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
