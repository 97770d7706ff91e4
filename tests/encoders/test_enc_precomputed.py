"""The ``precomputed`` encoders: per-example features read by id from Parquet / NPZ / NPY files, their checks
(shapes, ids, values), missing ids counted and named, and the identity that follows the file's content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmfuse.encoders import build_image_encoder, build_text_encoder
from mmfuse.encoders.precomputed import FeatureFileError, MissingFeaturesError, MissingFeaturesWarning

pytest.importorskip("pyarrow", reason="Parquet feature files need pyarrow")

IDS = ["a", "b", "7"]


def _parquet(path: Path, **columns) -> Path:
    pd.DataFrame({"id": IDS, **columns}).to_parquet(path)
    return path


def _pooled(n: int = 3, d: int = 4) -> np.ndarray:
    return np.arange(n * d, dtype=np.float32).reshape(n, d)


def test_parquet_pooled_and_ragged_sequences_by_id(tmp_path: Path) -> None:
    pooled = _pooled()
    sequences = [[[1.0, 2.0]], [[3.0, 4.0], [5.0, 6.0]], [[7.0, 8.0], [9.0, 10.0], [11.0, 12.0]]]
    path = _parquet(tmp_path / "f.parquet", pooled=list(pooled), sequence=sequences)
    encoder = build_text_encoder("precomputed", path=str(path))
    assert (encoder.dim, encoder.sequence_dim, encoder.is_frozen) == (4, 2, True)
    out, present = encoder.encode_ids(["7", "a"], need_sequence=True)
    assert torch.equal(out.pooled, torch.from_numpy(pooled[[2, 0]]))
    assert out.sequence.shape == (2, 3, 2)
    assert out.mask.tolist() == [[True, True, True], [True, False, False]]
    assert torch.equal(out.sequence[1, 0], torch.tensor([1.0, 2.0]))
    assert present.tolist() == [True, True]


def test_npz_with_int_ids_and_an_explicit_mask(tmp_path: Path) -> None:
    seq = np.ones((3, 2, 5), dtype=np.float32)
    mask = np.array([[True, False], [True, True], [False, True]])
    np.savez(tmp_path / "f.npz", ids=np.array([10, 11, 12]), pooled=_pooled(), sequence=seq, mask=mask)
    encoder = build_image_encoder("precomputed", path=str(tmp_path / "f.npz"))
    out, _ = encoder.encode_ids(["12", "10"], need_sequence=True)  # int ids match as their decimal strings
    assert out.mask.tolist() == [[False, True], [True, False]]
    assert (encoder.dim, encoder.sequence_dim) == (4, 5)


def test_npy_reads_its_ids_from_a_text_file(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", _pooled())
    (tmp_path / "ids.txt").write_text("a\nb\n7\n")
    encoder = build_text_encoder("precomputed", path=str(tmp_path / "f.npy"), ids=str(tmp_path / "ids.txt"))
    out, _ = encoder.encode_ids(["b"], need_sequence=False)
    assert torch.equal(out.pooled, torch.from_numpy(_pooled()[[1]]))
    with pytest.raises(FeatureFileError, match=r"\.npy array, which holds no ids; pass options\.ids"):
        build_text_encoder("precomputed", path=str(tmp_path / "f.npy"))


def test_missing_ids_are_counted_named_and_past_the_share_an_error(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "f.parquet", pooled=list(_pooled()))
    strict = build_image_encoder("precomputed", path=str(path))
    with pytest.raises(MissingFeaturesError, match=r"1 of 3 examples \(33%\) have no row .*ids 'zz'.*max_missing"):
        strict.encode_ids(["a", "zz", "b"], need_sequence=False)
    lenient = build_image_encoder("precomputed", path=str(path), max_missing=0.5)
    with pytest.warns(MissingFeaturesWarning, match=r"1 of 3 examples .*'zz'.*zero features"):
        out, present = lenient.encode_ids(["a", "zz", "b"], need_sequence=False)
    assert present.tolist() == [True, False, True]  # a missing image row counts as a missing image
    assert torch.count_nonzero(out.pooled[1]) == 0


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"pooled": [[1.0, 2.0], [1.0], [1.0, 2.0]]}, r"'pooled' vectors have different lengths: 2 \(id 'a'\), 1 \("),
        ({"pooled": [[1.0, np.nan], [1.0, 2.0], [1.0, 2.0]]}, r"1 rows have NaN or infinite pooled values \(ids \['a"),
        ({"vector": [[1.0], [2.0], [3.0]]}, r"no column 'pooled' \(options\.pooled_key\); its columns: \['id', 'v"),
        (
            {"pooled": [[1.0], [2.0], [3.0]], "sequence": [[[1.0, 2.0]], [[1.0]], [[1.0, 2.0]]]},
            r"the vectors of column 'sequence' have different sizes \[1, 2\]",
        ),
    ],
    ids=["ragged-pooled", "nan", "no-column", "ragged-sequence-dim"],
)
def test_bad_parquet_files_say_what_is_wrong(tmp_path: Path, columns: dict, message: str) -> None:
    path = _parquet(tmp_path / "f.parquet", **columns)
    with pytest.raises(FeatureFileError, match=message):
        build_text_encoder("precomputed", path=str(path))


def test_bad_npz_shapes_and_duplicate_ids(tmp_path: Path) -> None:
    np.savez(tmp_path / "rows.npz", ids=np.array(IDS), pooled=_pooled(n=2))
    with pytest.raises(FeatureFileError, match="has 3 ids but 2 pooled vectors"):
        build_text_encoder("precomputed", path=str(tmp_path / "rows.npz"))
    np.savez(tmp_path / "flat.npz", ids=np.array(IDS), pooled=np.zeros(3, dtype=np.float32))
    with pytest.raises(FeatureFileError, match=r"must be a \(N, D\) array .*got shape \(3,\)"):
        build_text_encoder("precomputed", path=str(tmp_path / "flat.npz"))
    np.savez(tmp_path / "seq.npz", ids=np.array(IDS), pooled=_pooled(), sequence=np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(FeatureFileError, match=r"sequence must be a \(N, L, D\) array"):
        build_text_encoder("precomputed", path=str(tmp_path / "seq.npz"))
    np.savez(tmp_path / "dupe.npz", ids=np.array(["a", "b", "a"]), pooled=_pooled())
    with pytest.raises(FeatureFileError, match=r"1 duplicate ids \(first: \['a'\]\)"):
        build_text_encoder("precomputed", path=str(tmp_path / "dupe.npz"))


def test_a_head_that_reads_sequences_needs_them_in_the_file(tmp_path: Path) -> None:
    encoder = build_text_encoder("precomputed", path=str(_parquet(tmp_path / "f.parquet", pooled=list(_pooled()))))
    with pytest.raises(FeatureFileError, match="holds only pooled vectors"):
        encoder.encode_ids(["a"], need_sequence=True)


def test_raw_text_is_refused_with_what_to_do_instead(tmp_path: Path) -> None:
    encoder = build_text_encoder("precomputed", path=str(_parquet(tmp_path / "f.parquet", pooled=list(_pooled()))))
    with pytest.raises(FeatureFileError, match=r"cannot tokenize raw text.*MultimodalClassifier\.predict"):
        encoder.tokenize(["hello"])


def test_identity_is_the_file_content(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "f.parquet", pooled=list(_pooled()))
    first = build_text_encoder("precomputed", path=str(path)).cache_identity()
    assert build_text_encoder("precomputed", path=str(path)).cache_identity() == first
    _parquet(path, pooled=list(_pooled() + 1))
    assert build_text_encoder("precomputed", path=str(path)).cache_identity()["file_sha256"] != first["file_sha256"]


def test_a_missing_path_or_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs options\.path"):
        build_text_encoder("precomputed")
    with pytest.raises(FileNotFoundError, match="not found"):
        build_text_encoder("precomputed", path=str(tmp_path / "nope.parquet"))
    with pytest.raises(ValueError, match=r"must end in one of \['\.parquet', '\.npz', '\.npy'\]"):
        build_text_encoder("precomputed", path=str(tmp_path / "f.csv"))


def _grid_npz(path: Path, regions: int = 6, mask: np.ndarray | None = None) -> Path:
    seq = np.arange(3 * regions * 2, dtype=np.float32).reshape(3, regions, 2)
    extra = {} if mask is None else {"mask": mask}
    np.savez(path, ids=np.array(IDS), pooled=_pooled(), sequence=seq, **extra)
    return path


def test_an_image_grid_option_lays_the_stored_regions_out_and_travels_with_the_outputs(tmp_path: Path) -> None:
    path = str(_grid_npz(tmp_path / "f.npz"))
    plain = build_image_encoder("precomputed", path=path)
    gridded = build_image_encoder("precomputed", path=path, grid=[3, 2])
    out, _ = gridded.encode_ids(["7", "a"], need_sequence=True)
    assert out.grid == (3, 2) and gridded.grid_shape() == (3, 2)
    assert out.sequence.shape == (2, 6, 2)  # the same regions, row-major
    assert plain.encode_ids(["7"], need_sequence=True)[0].grid is None and plain.grid_shape() is None  # as before
    assert "grid" not in plain.cache_identity() and gridded.cache_identity()["grid"] == [3, 2]
    assert gridded.encode_ids(["a"], need_sequence=False)[0].grid is None  # no sequence, no grid


@pytest.mark.parametrize(
    ("grid", "error", "message"),
    [
        ([2, 2], FeatureFileError, r"options\.grid=\[2, 2\] has 4 cells, but .* stores sequences of 6 regions"),
        ([6], ValueError, r"options\.grid must be \[h, w\], two positive integers"),
        ([0, 6], ValueError, r"two positive integers"),
        ("3x2", ValueError, r"got '3x2'"),
    ],
)
def test_a_grid_that_does_not_fit_the_file_names_both_numbers(tmp_path: Path, grid, error, message) -> None:
    with pytest.raises(error, match=message):
        build_image_encoder("precomputed", path=str(_grid_npz(tmp_path / "f.npz")), grid=grid)


def test_a_grid_needs_full_sequences_in_the_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "pooled.npz", ids=np.array(IDS), pooled=_pooled())
    with pytest.raises(FeatureFileError, match=r"holds only pooled vectors; add 'sequence'"):
        build_image_encoder("precomputed", path=str(tmp_path / "pooled.npz"), grid=[3, 2])
    mask = np.ones((3, 4), dtype=bool)
    mask[1, 3] = False
    with pytest.raises(FeatureFileError, match=r"1 rows of .* do not have all 4 cells .*ids \['b'\]"):
        build_image_encoder("precomputed", path=str(_grid_npz(tmp_path / "f.npz", 4, mask)), grid=[2, 2])
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['grid'\] for text encoder"):
        build_text_encoder("precomputed", path=str(_grid_npz(tmp_path / "g.npz")), grid=[3, 2])
