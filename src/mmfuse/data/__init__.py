"""The data layer: configs and presets, readers, checked splits, label maps, image opening, the torch dataset.

Typical use::

    cfg = DataConfig(root="data/hateful_memes", preset="hateful_memes")
    splits = load_splits(cfg)                      # {"train": Split, "val": Split, "test": Split}
    print(splits["train"].report.summary())        # every defect found and what was done about it
    label_map = LabelMap.from_labels(splits["train"].labels)
    dataset = MultimodalDataset(splits["train"].examples, label_map=label_map, image_preprocess=encoder.preprocess)
    loader = DataLoader(dataset, batch_size=32, collate_fn=collate_examples, num_workers=2)

The inputs of predict / evaluate (examples, a split or a data file: :mod:`mmfuse.data.inputs`) and the count of
their missing images (:mod:`mmfuse.data.missing_images`) live here too, so the model layer can predict without the
training engine.

Names load on first use (as in the top-level package), so ``import mmfuse.data`` and the CLI stay fast: torch and
scikit-learn are imported only by what needs them.
"""

from __future__ import annotations

from mmfuse._lazy import lazy_exports

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "OutsideRootError": "mmfuse.data._paths",
    "ColumnMap": "mmfuse.data.config",
    "DataConfig": "mmfuse.data.config",
    "DataConfigError": "mmfuse.data.config",
    "SplitConfig": "mmfuse.data.config",
    "load_data_config": "mmfuse.data.config",
    "MultimodalDataset": "mmfuse.data.dataset",
    "collate_examples": "mmfuse.data.dataset",
    "Example": "mmfuse.data.example",
    "DEFAULT_MAX_PIXELS": "mmfuse.data.images",
    "ImageDecodeError": "mmfuse.data.images",
    "ImageError": "mmfuse.data.images",
    "ImageNotFoundError": "mmfuse.data.images",
    "ImageOutsideRootError": "mmfuse.data.images",
    "ImageTooLargeError": "mmfuse.data.images",
    "check_image": "mmfuse.data.images",
    "open_image": "mmfuse.data.images",
    "LabelMap": "mmfuse.data.labels",
    "UnseenLabelError": "mmfuse.data.labels",
    "ColumnKindError": "mmfuse.data.loading",
    "Split": "mmfuse.data.loading",
    "UnusableDataError": "mmfuse.data.loading",
    "load_examples": "mmfuse.data.loading",
    "load_splits": "mmfuse.data.loading",
    "PRESETS": "mmfuse.data.presets",
    "BadRowError": "mmfuse.data.readers",
    "MissingColumnError": "mmfuse.data.readers",
    "Problem": "mmfuse.data.report",
    "SplitReport": "mmfuse.data.report",
    "make_synthetic": "mmfuse.data.synthetic",
    "decode_text": "mmfuse.data.text",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
