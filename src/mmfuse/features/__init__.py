"""Features: what the model reads of each modality, between the encoders and everything that consumes them.

A frozen encoder gives the same output for an example every epoch, so its outputs are computed once per dataset and
the head trains and evaluates from them. This layer holds that path, from examples to the batches a model reads:

- :mod:`~mmfuse.features.plan`: :class:`FeaturePlan`, per modality ``raw`` (the model runs its encoder),
  ``pooled`` / ``sequence`` / ``grid`` (precomputed) or absent: the one place that answers "is this modality
  precomputed?" (:func:`plan_features` decides it for a model);
- :mod:`~mmfuse.features.table`: :class:`FeatureTable` (one encoder's outputs, row ``i`` = example ``i``) and the
  :class:`FeatureSource` interface (``get(encoder, examples, need_sequence=...)``);
- :mod:`~mmfuse.features.compute`: :func:`compute_features`, one pass of a frozen encoder over a dataset;
- :mod:`~mmfuse.features.store`: :class:`FeatureStore`, the in-process memo (the persistent on-disk cache,
  :mod:`mmfuse.cache`, is another :class:`FeatureSource`);
- :mod:`~mmfuse.features.batches`: :func:`compute_tables`, :func:`make_loader` and :class:`InputMaker`, which turn
  a collated batch into :class:`~mmfuse.fusion.FusionInputs`.

It imports only ``mmfuse.data``, ``mmfuse.encoders`` and ``mmfuse.fusion`` (and torch); ``mmfuse.cache`` and
``mmfuse.engine`` build on it (``tests/test_layers.py`` checks this).
"""

from mmfuse.features.batches import InputMaker, Tables, compute_tables, make_loader
from mmfuse.features.compute import compute_features
from mmfuse.features.plan import MODALITIES, FeaturePlan, encoders_of, plan_features
from mmfuse.features.store import FeatureStore, default_store, describe
from mmfuse.features.table import FeatureSource, FeatureTable, content_key

__all__ = [
    "MODALITIES",
    "FeaturePlan",
    "FeatureSource",
    "FeatureStore",
    "FeatureTable",
    "InputMaker",
    "Tables",
    "compute_features",
    "compute_tables",
    "content_key",
    "default_store",
    "describe",
    "encoders_of",
    "make_loader",
    "plan_features",
]
