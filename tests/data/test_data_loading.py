"""Readers, row policies, image policies, text decoding and seeded splits of load_splits / load_examples."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from mmfuse.data import (
    BadRowError,
    DataConfig,
    ImageNotFoundError,
    MissingColumnError,
    UnusableDataError,
    load_examples,
    load_splits,
)


def _cfg(root: Path, **fields: object) -> DataConfig:
    base: dict[str, object] = {"root": root, "train": "train.jsonl", "columns": {"image": "img"}}
    base.update(fields)
    return DataConfig.model_validate(base)


# --- JSONL rows ---------------------------------------------------------------------------------------------------


def test_jsonl_loads_with_label_forms(tmp_path: Path, write_image: Callable, write_jsonl: Callable) -> None:
    for name in ("a", "b", "c", "d"):
        write_image(tmp_path / "img" / f"{name}.png")
    rows = [
        {"id": 1, "text": "int label", "img": "img/a.png", "label": 1},
        {"id": "2", "text": "list label", "img": "img/b.png", "label": [0, 0.9]},
        {"id": 3.0, "text": "  padded  ", "img": "img/c.png", "label": "1"},
        {"id": "4", "text": None, "img": "img/d.png", "label": 0.0},
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    split = load_examples("train.jsonl", _cfg(tmp_path))
    assert [e.id for e in split.examples] == ["1", "2", "3", "4"]
    assert split.labels == ["1", "0", "1", "0"]
    assert [e.text for e in split.examples] == ["int label", "list label", "padded", ""]
    assert split.examples[0].image == (tmp_path / "img" / "a.png").resolve()
    assert split.report.empty_texts == 1
    assert split.report.label_counts == {"0": 2, "1": 2}


def test_broken_json_line_names_file_and_line(tmp_path: Path, write_image: Callable, write_jsonl: Callable) -> None:
    write_image(tmp_path / "img" / "a.png")
    rows = [{"id": i, "text": "t", "img": "img/a.png", "label": i % 2} for i in range(4)]
    write_jsonl(tmp_path / "train.jsonl", rows, raw_lines={2: '{"id": 9, "text": "oops", '})
    with pytest.raises(BadRowError, match=r"train\.jsonl.*line 3.*broken JSON") as exc:
        load_examples("train.jsonl", _cfg(tmp_path))
    assert "on_bad_row: skip" in str(exc.value)
    split = load_examples("train.jsonl", _cfg(tmp_path, on_bad_row="skip"))
    assert len(split.examples) == 4
    assert [p.where for p in split.report.bad_rows] == ["line 3"]


def test_non_object_line_and_missing_field(tmp_path: Path, write_image: Callable, write_jsonl: Callable) -> None:
    write_image(tmp_path / "img" / "a.png")
    rows = [
        {"id": 1, "text": "ok", "img": "img/a.png", "label": 0},
        [1, 2, 3],
        {"id": 3, "img": "img/a.png", "label": 1},
        {"id": 4, "text": "ok", "img": "img/a.png", "label": 1},
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(BadRowError, match=r"line 2: not a JSON object"):
        load_examples("train.jsonl", _cfg(tmp_path))
    split = load_examples("train.jsonl", _cfg(tmp_path, on_bad_row="skip"))
    assert [e.id for e in split.examples] == ["1", "4"]
    reasons = {p.where: p.reason for p in split.report.bad_rows}
    assert "missing field 'text'" in reasons["line 3"]
    assert "'id', 'img', 'label'" in reasons["line 3"]  # lists the fields the row has


def test_field_missing_from_every_row_is_a_config_error(
    tmp_path: Path, write_image: Callable, write_jsonl: Callable
) -> None:
    write_image(tmp_path / "img" / "a.png")
    write_jsonl(tmp_path / "train.jsonl", [{"id": 1, "caption": "t", "img": "img/a.png", "label": 0}])
    with pytest.raises(MissingColumnError, match=r"column 'text' \(columns\.text\) not found.*'caption'"):
        load_examples("train.jsonl", _cfg(tmp_path, on_bad_row="skip"))


def test_json_array_file(tmp_path: Path, write_image: Callable) -> None:
    write_image(tmp_path / "img" / "a.png")
    rows = [{"id": i, "text": "t", "img": "img/a.png", "label": i % 2} for i in range(3)]
    (tmp_path / "data.json").write_text(json.dumps(rows), encoding="utf-8")
    split = load_examples("data.json", _cfg(tmp_path, train="data.json"))
    assert len(split.examples) == 3


def test_unlabeled_file_and_required_labels(tmp_path: Path, write_image: Callable, write_jsonl: Callable) -> None:
    write_image(tmp_path / "img" / "a.png")
    write_jsonl(tmp_path / "new.jsonl", [{"id": i, "text": "t", "img": "img/a.png"} for i in range(3)])
    split = load_examples("new.jsonl", _cfg(tmp_path))
    assert not split.report.labeled
    assert split.labels == [None, None, None]
    with pytest.raises(MissingColumnError, match=r"columns\.label"):
        load_examples("new.jsonl", _cfg(tmp_path), labeled=True)
    labeled_file = write_jsonl(tmp_path / "l.jsonl", [{"id": 1, "text": "t", "img": "img/a.png", "label": "x"}])
    assert load_examples(labeled_file, _cfg(tmp_path), labeled=False).labels == [None]


def test_label_map_merges_raw_values_and_rejects_unmapped(
    tmp_path: Path, write_image: Callable, write_jsonl: Callable
) -> None:
    write_image(tmp_path / "img" / "a.png")
    raw = ["pos", "positive", "neg", "meh"]
    write_jsonl(
        tmp_path / "train.jsonl", [{"id": i, "text": "t", "img": "img/a.png", "label": r} for i, r in enumerate(raw)]
    )
    label_map = {"pos": "positive", "positive": "positive", "neg": "negative"}
    with pytest.raises(BadRowError, match=r"line 4: label 'meh' is not in label_map"):
        load_examples("train.jsonl", _cfg(tmp_path, label_map=label_map))
    split = load_examples("train.jsonl", _cfg(tmp_path, label_map=label_map, on_bad_row="skip"))
    assert split.labels == ["positive", "positive", "negative"]


def test_duplicate_ids_keep_every_row_and_are_reported(
    tmp_path: Path, write_image: Callable, write_jsonl: Callable
) -> None:
    # ids name rows for people: a second row with an id seen before is another example, never merged away
    write_image(tmp_path / "img" / "a.png")
    write_image(tmp_path / "img" / "b.png", color=(0, 0, 200))
    rows = [
        {"id": 1, "text": "first", "img": "img/a.png", "label": 0},
        {"id": 2, "text": "x", "img": "img/a.png", "label": 1},
        {"id": 1, "text": "again", "img": "img/b.png", "label": 1},
        {"id": 2, "text": "x", "img": "img/a.png", "label": 1},
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    split = load_examples("train.jsonl", _cfg(tmp_path))
    assert [(e.id, e.text) for e in split.examples] == [("1", "first"), ("2", "x"), ("1", "again"), ("2", "x")]
    assert split.report.examples == 4
    assert [(p.where, p.id) for p in split.report.duplicate_ids] == [("line 3", "1"), ("line 4", "2")]
    first, second = (p.reason for p in split.report.duplicate_ids)
    assert first == "id also at line 1 (different text, image, label); both rows kept"
    assert second == "id also at line 2 (same text, image and label); both rows kept"
    # the same image under one id twice is still found (image digests are keyed by file, not by id)
    assert [p.id for p in split.report.same_images] == ["2", "2"]


def test_same_image_twice_and_conflicting_labels(tiny_dataset: Callable, write_jsonl: Callable) -> None:
    root = tiny_dataset(n=3)
    rows = [
        {"id": "v1", "text": "text a 0", "img": "img/a1.png", "label": "a"},  # byte-identical to a0.png (same colour)
        {"id": "v2", "text": "same", "img": "img/b0.png", "label": "b"},
        {"id": "v3", "text": "same", "img": "img/b0.png", "label": "a"},
    ]
    write_jsonl(root / "dev.jsonl", rows)
    splits = load_splits(DataConfig(root=root, train="train.jsonl", val="dev.jsonl", columns={"image": "img"}))
    train_same = {p.id: p.reason for p in splits["train"].report.same_images}
    assert train_same == {
        "a1": "same image as id a0",
        "a2": "same image as id a0",
        "b1": "same image as id b0",
        "b2": "same image as id b0",
    }
    (conflict,) = splits["val"].report.same_images
    assert conflict.id == "v3" and "same text, but labeled 'a' vs 'b' (conflicting labels)" in conflict.reason
    assert any("3 examples have the same image file as an example of train" in n for n in splits["val"].report.notes)


# --- CSV ----------------------------------------------------------------------------------------------------------


def test_csv_sniffed_delimiter_and_quoted_fields(tmp_path: Path, write_image: Callable) -> None:
    write_image(tmp_path / "pics" / "x.png")
    (tmp_path / "data.csv").write_text(
        'name;caption;y\nx.png;"a; quoted\nmultiline caption";pos\nx.png;plain;neg\n', encoding="utf-8"
    )
    cfg = DataConfig(
        root=tmp_path,
        train="data.csv",
        columns={"id": None, "text": "caption", "image": "name", "label": "y"},
        image_template="pics/{image}",
    )
    split = load_examples("data.csv", cfg)
    assert [e.text for e in split.examples] == ["a; quoted\nmultiline caption", "plain"]
    assert [e.id for e in split.examples] == ["0", "1"]
    assert split.examples[0].image == (tmp_path / "pics" / "x.png").resolve()


def test_tsv_and_wrong_field_count(tmp_path: Path, write_image: Callable) -> None:
    write_image(tmp_path / "x.png")
    (tmp_path / "data.tsv").write_text("id\ttext\timage\tlabel\n1\thi\tx.png\t0\n2\tbroken\tx.png\n3\tok\tx.png\t1\n")
    cfg = DataConfig(root=tmp_path, train="data.tsv")
    with pytest.raises(BadRowError, match=r"row 2 \(line 3\): has 3 fields but the header has 4"):
        load_examples("data.tsv", cfg)
    split = load_examples("data.tsv", cfg.model_copy(update={"on_bad_row": "skip"}))
    assert [e.id for e in split.examples] == ["1", "3"]


def test_malformed_csv_quoting_is_a_bad_row(tmp_path: Path, write_image: Callable) -> None:
    write_image(tmp_path / "x.png")
    lines = [
        "id,text,image,label",
        "1,ok,x.png,0",
        '2,"bad"quote,x.png,1',
        "3,fine,x.png,1",
        '4,"never closed,x.png,0',
        "5,x,x.png,1",
    ]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    cfg = DataConfig(root=tmp_path, train="data.csv", on_bad_row="skip")
    split = load_examples("data.csv", cfg)
    assert [e.id for e in split.examples] == ["1", "3"]
    first, second = split.report.bad_rows
    assert first.where == "row 2 (line 3)" and "malformed CSV" in first.reason
    assert second.where == "row 4 (line 5)" and "never closed, so lines 5-6 are lost" in second.reason


def test_missing_csv_column_lists_existing_ones_even_with_skip(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("image_name,sentence,label\na.png,hi,0\n")
    cfg = DataConfig(root=tmp_path, train="data.csv", columns={"id": None, "image": "image_name"}, on_bad_row="skip")
    with pytest.raises(MissingColumnError) as exc:
        load_examples("data.csv", cfg)
    message = str(exc.value)
    assert "data.csv" in message and "header (line 1)" in message
    assert "'text'" in message and "'image_name', 'sentence', 'label'" in message
    assert "set columns.text" in message


def test_non_utf8_csv_file_is_decoded_and_reported(tmp_path: Path, write_image: Callable) -> None:
    write_image(tmp_path / "x.png")
    content = "id,text,image,label\n1,Café crème brûlée à la française,x.png,0\n2,Voilà déjà,x.png,1\n"
    (tmp_path / "data.csv").write_bytes(content.encode("cp1252"))
    cfg = DataConfig(root=tmp_path, train="data.csv", fallback_encodings=["cp1252"])
    split = load_examples("data.csv", cfg)
    assert split.examples[0].text == "Café crème brûlée à la française"
    assert split.report.file_encoding == "cp1252"


# --- text files ---------------------------------------------------------------------------------------------------


def test_text_from_files_with_fallback_decoding(tmp_path: Path, write_image: Callable, write_jsonl: Callable) -> None:
    texts = {"1": "plain utf-8 ✓".encode(), "2": "Ellipsis…".encode("gbk"), "3": "Привет, мир".encode("gbk"), "4": b""}
    for key, data in texts.items():
        write_image(tmp_path / "data" / f"{key}.jpg", fmt="JPEG")
        (tmp_path / "data" / f"{key}.txt").write_bytes(data)
    rows = [{"id": k, "text": "mojibake Â§", "img": f"data/{k}.jpg", "label": "x"} for k in texts]
    write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = _cfg(
        tmp_path, columns={"text": None, "image": "img"}, text_file="data/{id}.txt", fallback_encodings=["gb18030"]
    )
    split = load_examples("train.jsonl", cfg)
    assert [e.text for e in split.examples] == ["plain utf-8 ✓", "Ellipsis…", "Привет, мир", ""]
    assert [(p.id, p.reason) for p in split.report.fallback_texts] == [("2", "gb18030"), ("3", "gb18030")]
    assert split.report.empty_texts == 1


def test_undeclared_encoding_is_detected_without_crashing(
    tmp_path: Path, write_image: Callable, write_jsonl: Callable
) -> None:
    write_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes("Grüße aus München, schöne Straße und Käse".encode("latin-1"))
    write_jsonl(tmp_path / "train.jsonl", [{"id": "a", "img": "a.png", "label": 0}])
    split = load_examples("train.jsonl", _cfg(tmp_path, columns={"text": None, "image": "img"}, text_file="{id}.txt"))
    (problem,) = split.report.fallback_texts
    assert problem.reason  # whatever charset-normalizer guessed, it is named and counted
    assert split.examples[0].text.startswith("Gr")


def test_missing_or_escaping_text_file_is_a_bad_row(
    tmp_path: Path, write_image: Callable, write_jsonl: Callable
) -> None:
    write_image(tmp_path / "a.png")
    (tmp_path / "ok.txt").write_text("fine")
    rows = [{"id": "ok", "img": "a.png", "label": 0}, {"id": "gone", "img": "a.png", "label": 0}]
    rows.append({"id": "../../etc/passwd", "img": "a.png", "label": 0})
    write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = _cfg(tmp_path, columns={"text": None, "image": "img"}, text_file="{id}.txt", on_bad_row="skip")
    split = load_examples("train.jsonl", cfg)
    assert [e.id for e in split.examples] == ["ok"]
    reasons = [p.reason for p in split.report.bad_rows]
    assert "text file 'gone.txt' not found" in reasons[0]
    assert "outside the dataset root" in reasons[1]


# --- images -------------------------------------------------------------------------------------------------------


def _rows_with_bad_images(root: Path, write_image: Callable, write_jsonl: Callable) -> None:
    write_image(root / "img" / "good.png")
    (root / "img" / "zero.png").write_bytes(b"")
    (root / "img" / "text.jpg").write_bytes(b"not an image at all")
    write_image(root / "img" / "jpeg.png", fmt="JPEG")
    write_image(root.parent / "outside.png")
    rows = [
        {"id": "good", "img": "img/good.png"},
        {"id": "zero", "img": "img/zero.png"},
        {"id": "text", "img": "img/text.jpg"},
        {"id": "gone", "img": "img/gone.png"},
        {"id": "jpeg", "img": "img/jpeg.png"},
        {"id": "escape", "img": "../outside.png"},
        {"id": "none", "img": ""},
    ]
    write_jsonl(root / "train.jsonl", [{**r, "text": r["id"], "label": 0} for r in rows])


def test_missing_image_policy_skip_lists_each_cause(
    tmp_path: Path, write_image: Callable, write_jsonl: Callable
) -> None:
    root = tmp_path / "ds"
    _rows_with_bad_images(root, write_image, write_jsonl)
    split = load_examples("train.jsonl", _cfg(root))
    assert [e.id for e in split.examples] == ["good", "jpeg"]
    skipped = {p.id: p.reason for p in split.report.skipped_images}
    assert set(skipped) == {"zero", "text", "gone", "escape", "none"}
    assert "empty file" in skipped["zero"]
    assert "not an image" in skipped["text"]
    assert "file not found" in skipped["gone"]
    assert "outside the dataset root" in skipped["escape"]
    assert "names no image" in skipped["none"]
    assert [(p.id, p.reason) for p in split.report.extension_mismatches] == [("jpeg", "JPEG content in a .png file")]


def test_missing_image_policy_blank_keeps_examples_without_image(
    tmp_path: Path, write_image: Callable, write_jsonl: Callable
) -> None:
    root = tmp_path / "ds"
    _rows_with_bad_images(root, write_image, write_jsonl)
    split = load_examples("train.jsonl", _cfg(root, on_missing_image="blank"))
    assert len(split.examples) == 7
    assert {e.id for e in split.examples if e.image is None} == {"zero", "text", "gone", "escape", "none"}
    assert len(split.report.blank_images) == 5 and not split.report.skipped_images


def test_missing_image_policy_error_and_allow_outside_root(
    tmp_path: Path, write_image: Callable, write_jsonl: Callable
) -> None:
    root = tmp_path / "ds"
    _rows_with_bad_images(root, write_image, write_jsonl)
    with pytest.raises(ValueError, match=r"zero\.png.*empty file.*id zero, line 2") as exc:
        load_examples("train.jsonl", _cfg(root, on_missing_image="error"))
    assert "on_missing_image: skip" in str(exc.value)
    split = load_examples("train.jsonl", _cfg(root, allow_outside_root=True))
    assert "escape" in {e.id for e in split.examples}


def test_missing_image_error_is_a_file_not_found_error(tmp_path: Path, write_jsonl: Callable) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"id": 1, "text": "t", "img": "gone.png", "label": 0}])
    with pytest.raises(ImageNotFoundError):
        load_examples("train.jsonl", _cfg(tmp_path, on_missing_image="error"))


def test_verify_images_off_only_checks_existence(tmp_path: Path, write_image: Callable, write_jsonl: Callable) -> None:
    root = tmp_path / "ds"
    _rows_with_bad_images(root, write_image, write_jsonl)
    split = load_examples("train.jsonl", _cfg(root, verify_images=False))
    assert {p.id for p in split.report.skipped_images} == {"gone", "escape", "none"}


# --- splits -------------------------------------------------------------------------------------------------------


def test_seeded_stratified_split_of_one_file(tiny_dataset: Callable) -> None:
    root = tiny_dataset(n=10)
    cfg = DataConfig(root=root, train="train.jsonl", columns={"image": "img"})
    splits = load_splits(cfg)
    assert list(splits) == ["train", "val"]
    assert len(splits["train"]) == 16 and len(splits["val"]) == 4
    assert Counter(splits["val"].labels) == {"a": 2, "b": 2}
    assert "stratified" in splits["val"].report.source
    again = load_splits(cfg)
    assert [e.id for e in again["val"].examples] == [e.id for e in splits["val"].examples]
    other = load_splits(cfg.model_copy(update={"split": cfg.split.model_copy(update={"seed": 1})}))
    assert {e.id for e in other["val"].examples} != {e.id for e in splits["val"].examples}


def test_split_ratios_for_val_and_test(tiny_dataset: Callable) -> None:
    root = tiny_dataset(n=20)
    cfg = DataConfig(root=root, train="train.jsonl", columns={"image": "img"}, split={"val": 0.1, "test": 0.3})
    splits = load_splits(cfg)
    assert [len(s) for s in splits.values()] == [24, 4, 12]
    ids = [e.id for s in splits.values() for e in s.examples]
    assert len(ids) == len(set(ids)) == 40
    assert Counter(splits["test"].labels) == {"a": 6, "b": 6}


def test_split_file_wins_over_ratio(tiny_dataset: Callable, write_jsonl: Callable) -> None:
    root = tiny_dataset(n=5)
    write_jsonl(root / "dev.jsonl", [{"id": "v", "text": "t", "img": "img/a0.png", "label": "a"}])
    splits = load_splits(DataConfig(root=root, train="train.jsonl", val="dev.jsonl", columns={"image": "img"}))
    assert len(splits["train"]) == 10 and [e.id for e in splits["val"].examples] == ["v"]
    assert "test" not in splits


def test_unusable_data_is_refused_with_reasons(tiny_dataset: Callable, write_jsonl: Callable) -> None:
    root = tiny_dataset(n=5, labels=("a",))
    write_jsonl(root / "dev.jsonl", [{"id": "v", "text": "t", "img": "img/a0.png", "label": "zzz"}])
    cfg = DataConfig(root=root, train="train.jsonl", val="dev.jsonl", columns={"image": "img"})
    with pytest.raises(UnusableDataError, match=r"train: train has one class only \(a\)") as exc:
        load_splits(cfg)
    assert "labels not in train: ['zzz']" in str(exc.value)
    splits = load_splits(cfg, strict=False)
    assert not splits["train"].report.usable and not splits["val"].report.usable


def test_ids_shared_with_train_are_noted(tiny_dataset: Callable, write_jsonl: Callable) -> None:
    root = tiny_dataset(n=3)
    write_jsonl(root / "dev.jsonl", [{"id": "a0", "text": "t", "img": "img/a0.png", "label": "a"}])
    splits = load_splits(DataConfig(root=root, train="train.jsonl", val="dev.jsonl", columns={"image": "img"}))
    assert any("1 ids also in train" in n for n in splits["val"].report.notes)


def test_missing_root_and_split_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset root"):
        load_splits(DataConfig(root=tmp_path / "nope", train="train.jsonl"))
    with pytest.raises(FileNotFoundError, match="split file"):
        load_splits(DataConfig(root=tmp_path, train="train.jsonl"))


def test_report_summary_and_dict(tmp_path: Path, write_image: Callable, write_jsonl: Callable) -> None:
    root = tmp_path / "ds"
    _rows_with_bad_images(root, write_image, write_jsonl)
    report = load_examples("train.jsonl", _cfg(root)).report
    text = report.summary()
    assert "2 examples from 7 rows" in text and "skipped images: 5" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["usable"] is True and len(data["skipped_images"]) == 5


def test_a_file_without_an_id_column_numbers_its_rows_and_says_so(tmp_path: Path, write_image: Callable) -> None:
    write_image(tmp_path / "a.png")
    (tmp_path / "data.csv").write_text("text,image,label\nhello,a.png,0\nworld,a.png,1\n")
    split = load_examples("data.csv", DataConfig(root=tmp_path, train="data.csv"))
    assert [e.id for e in split.examples] == ["0", "1"]
    assert any("no 'id' column" in note and "row number" in note for note in split.report.notes)
    # a column named on purpose that the file lacks is still an error naming it
    cfg = DataConfig(root=tmp_path, train="data.csv", columns={"id": "id"})
    with pytest.raises(MissingColumnError, match=r"column 'id' \(columns\.id\) not found"):
        load_examples("data.csv", cfg)
