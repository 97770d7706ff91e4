"""The validated data config: where the files are, how to read them, and what to do with defects.

A config comes from YAML (:func:`load_data_config`), from a dict, or from keyword arguments. A ``preset`` fills the
fields the config does not set. Every wrong key or value is refused at validation with a message that names it and
the allowed keys or values.

Relative ``root`` paths resolve against ``base_dir`` in the pydantic validation context when one is given
(``DataConfig.model_validate(d, context={"base_dir": folder})``; :func:`load_data_config` passes the YAML file's
folder), else against the working directory when the data is loaded.
"""

from __future__ import annotations

import codecs
import copy
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from mmfuse._strict import StrictSection
from mmfuse.data.presets import PRESETS

TEMPLATE_FIELDS = ("id", "image")
"""Placeholders that ``text_file`` and ``image_template`` may use: the row's id and raw image column value."""


class DataConfigError(ValueError):
    """A data config with wrong keys or values; one line per problem, naming the key (no pydantic boilerplate)."""


class SplitConfig(StrictSection):
    """How to carve validation/test examples out of the train file when those splits have no file of their own.

    Attributes:
        val: fraction of the train file that becomes the val split when ``val`` names no file.
        test: fraction of the train file that becomes the test split when ``test`` names no file (0 = no test).
        seed: seed of the split, so the same config always gives the same split.
        stratify: keep class proportions equal across the parts (labeled data only).
    """

    val: float = 0.2
    test: float = 0.0
    seed: int = 0
    stratify: bool = True

    @field_validator("val", "test")
    @classmethod
    def _fraction(cls, v: float, info: ValidationInfo) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"split.{info.field_name} must be a fraction in [0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _leaves_train(self) -> SplitConfig:
        if self.val + self.test >= 1.0:
            raise ValueError(f"split.val + split.test must leave examples for train, got {self.val} + {self.test} >= 1")
        return self


class ColumnMap(StrictSection):
    """Names of the fields (JSONL keys or CSV header names) that hold each part of an example.

    Attributes:
        id: the example id; ``None`` uses the row number in the file (0-based).
        text: the text; ``None`` when the text comes from ``text_file`` instead.
        image: the image path (or file name, see ``image_template``); ``None`` when ``image_template`` builds the
            path from the id alone.
        label: the label (string, int, or a list whose first element is the label); optional in the file, so
            unlabeled prediction sets load with the same config.
    """

    id: str | None = "id"
    text: str | None = "text"
    image: str | None = "image"
    label: str | None = "label"


class DataConfig(StrictSection):
    """Everything needed to turn files under ``root`` into splits of :class:`~mmfuse.data.example.Example`.

    Attributes:
        root: dataset root; all relative paths (split files, images, text files) resolve against it.
        preset: name of a public layout (``hateful_memes``, ``multioff``, ``mvsa_single``) whose fields fill the
            ones this config does not set.
        format: ``jsonl``, ``csv`` or ``parquet``; ``auto`` picks by file suffix (.jsonl/.json/.ndjson,
            .csv/.tsv/.txt, .parquet/.pq).
        train: train split file, relative to root. A config that names no split file at all only says how to read
            rows passed in memory (columns, label map, policies), e.g. the one ``MultimodalClassifier(label=...,
            text=...)`` builds; loading its splits is then an error.
        val: val split file; when absent, ``split.val`` of the train file is carved off (seeded, stratified).
        test: test split file; when absent and ``split.test > 0``, carved off the train file too.
        split: how to carve splits from the train file.
        columns: names of the id/text/image/label fields.
        text_file: template of a per-example text file (e.g. ``data/{id}.txt``) read instead of a text column.
        image_template: template that turns the image column value into a path (e.g. ``Labelled Images/{image}``);
            without it, the image column value is the path relative to root.
        label_map: raw label value -> class name (several raw values may map to one class); a raw value missing
            from the map is a bad row.
        delimiter: CSV delimiter (one character); ``None`` sniffs it (tab for .tsv files).
        fallback_encodings: encodings tried in order for text that is not UTF-8, before charset-normalizer guesses
            one (its guesses are poor on short texts, so name the encoding when you know it).
        on_bad_row: ``error`` stops at the first bad row naming file, line and problem; ``skip`` drops bad rows and
            reports them.
        on_missing_image: ``skip`` drops examples whose image is missing or unreadable (reported), ``blank`` keeps
            them with a zero image and ``image_present=False``, ``error`` stops at the first one.
        verify_images: fully decode every image at load time, so unreadable images are caught up front rather than
            mid-epoch; ``False`` only checks that the files exist.
        max_image_pixels: images with more pixels are refused (decompression-bomb guard).
        allow_outside_root: allow image and text paths that resolve outside ``root`` (refused by default).
        max_missing_images: at predict / evaluate time, the largest share of examples that may be predicted from a
            blank image because theirs is missing or unreadable before it is an error (they are always counted and
            named); ``None``: any for evaluate, half for predict.
    """

    root: Path
    preset: str | None = None
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    train: str | None = None
    val: str | None = None
    test: str | None = None
    split: SplitConfig = Field(default_factory=SplitConfig)
    columns: ColumnMap = Field(default_factory=ColumnMap)
    text_file: str | None = None
    image_template: str | None = None
    label_map: dict[str, str] | None = None
    delimiter: str | None = None
    fallback_encodings: list[str] = Field(default_factory=list)
    on_bad_row: Literal["error", "skip"] = "error"
    on_missing_image: Literal["skip", "blank", "error"] = "skip"
    verify_images: bool = True
    max_image_pixels: int = 64_000_000
    allow_outside_root: bool = False
    max_missing_images: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or data.get("preset") is None:
            return data
        preset = PRESETS.get(str(data["preset"]))
        merged = dict(data)
        for key, value in preset.items():
            if key not in merged:
                merged[key] = copy.deepcopy(value)
            elif key in ("columns", "split"):
                user = merged[key]
                if isinstance(user, BaseModel):
                    user = user.model_dump(exclude_unset=True)
                if isinstance(user, Mapping):
                    merged[key] = {**value, **user}
        return merged

    @field_validator("root")
    @classmethod
    def _root_against_base(cls, v: Path, info: ValidationInfo) -> Path:
        v = v.expanduser()
        base = (info.context or {}).get("base_dir")
        if base is not None and not v.is_absolute():
            v = Path(base) / v
        return v

    @field_validator("text_file", "image_template")
    @classmethod
    def _template(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(v) if name is not None]
        except ValueError as e:
            raise ValueError(
                f"{info.field_name} {v!r} is not a valid template ({e}); write e.g. 'data/{{id}}.txt'"
            ) from None
        bad = [n for n in names if n not in TEMPLATE_FIELDS]
        if bad:
            raise ValueError(
                f"{info.field_name} {v!r} uses unknown placeholder(s) {bad}; allowed: {{id}}, {{image}}"
                " (write {{ and }} for literal braces)"
            )
        return v

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, v: str | None) -> str | None:
        if v is not None and len(v) != 1:
            raise ValueError(f"delimiter must be one character (e.g. ',', ';', '\\t', '|'), got {v!r}")
        return v

    @field_validator("fallback_encodings")
    @classmethod
    def _encodings(cls, v: list[str]) -> list[str]:
        for enc in v:
            try:
                codecs.lookup(enc)
            except LookupError:
                raise ValueError(f"unknown encoding {enc!r} in fallback_encodings; use a Python codec name") from None
        return v

    @field_validator("max_image_pixels")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError(f"max_image_pixels must be positive, got {v}")
        return v

    @field_validator("max_missing_images")
    @classmethod
    def _share(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError(f"max_missing_images must be a share in [0, 1] (e.g. 0.5), or null, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.columns.text is None and self.text_file is None:
            raise ValueError("no text source: set columns.text, or text_file (e.g. 'data/{id}.txt')")
        if self.columns.image is None and self.image_template is None:
            raise ValueError("no image source: set columns.image, or image_template (e.g. 'img/{id}.png')")
        for field in ("text_file", "image_template"):
            template = getattr(self, field)
            if template is not None and "{image}" in template and self.columns.image is None:
                raise ValueError(f"{field} {template!r} uses {{image}} but columns.image is not set")
        return self

    def resolved_root(self) -> Path:
        """The absolute dataset root (symlinks resolved)."""
        return self.root.resolve()


def load_data_config(
    source: str | Path | Mapping[str, Any], *, overrides: Mapping[str, Any] | None = None
) -> DataConfig:
    """Reads a data config from a YAML file or a mapping.

    The data fields may sit at the top level or under a ``data:`` key (the full training config has ``data:`` as
    one section). A relative ``root`` in a YAML file resolves against the file's folder.

    Args:
        source: path of a YAML file, or the config as a mapping.
        overrides: fields that replace those in ``source`` (e.g. ``{"preset": "multioff"}``).

    Raises:
        FileNotFoundError: the YAML file does not exist.
        ValueError: the YAML does not parse, or is not a mapping.
        DataConfigError: wrong keys or values (an unknown preset lists the known ones), one line each.
    """
    base_dir: Path | None = None
    if isinstance(source, Mapping):
        data: Any = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"data config {str(path)!r} not found; pass a YAML file or a dataset folder")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ValueError(f"data config {str(path)!r} is not valid YAML: {e}") from None
        base_dir = path.resolve().parent
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"data config must be a mapping of fields, got {type(data).__name__}")
    if "root" not in data and isinstance(data.get("data"), Mapping):
        data = dict(data["data"])
    data = {**data, **(overrides or {})}
    try:
        return DataConfig.model_validate(data, context={"base_dir": base_dir} if base_dir else None)
    except ValidationError as e:
        where = f" {str(source)!r}" if base_dir is not None else ""
        raise DataConfigError(f"invalid data config{where}:\n" + "\n".join(map(_error_line, e.errors()))) from None


def _error_line(error: Any) -> str:
    """``  key.path: what is wrong`` for one of pydantic's errors (its own message, less its prefix and URL)."""
    key = "".join(f"{p}: " for p in [".".join(str(p) for p in error["loc"])] if p)  # none for the whole config
    got = "" if error["type"] in ("value_error", "missing") else f" (got {str(error.get('input'))[:60]!r})"
    return f"  {key}{error['msg'].removeprefix('Value error, ')}{got}"
