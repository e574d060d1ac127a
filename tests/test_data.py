"""Dataset layer: builtin generators, tensor bundles, image manifests and every error path."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bise_core.data import Dataset, DatasetError, Split, open_dataset
from bise_core.data.builtin import PALETTE, _shipped_digits, _source_pools
from bise_core.data.bundle import read_bundle
from bise_core.data.splits import build_dataset

# --------------------------------------------------------------------------- builtin generators


@pytest.fixture(scope="module")
def biased() -> Dataset:
    return open_dataset("builtin:biased-digits?rho=0.99&seed=0&n=1000")


@pytest.fixture(scope="module")
def multicolor() -> Dataset:
    return open_dataset("builtin:multicolor-digits?rho_left=0.99&rho_right=0.8&seed=0&n=2000&size=20")


def agreement(split: Split, j: int = 0) -> float:
    return float((split.b[:, j] == split.y).float().mean())


def test_biased_digits_shapes_and_dtypes(biased: Dataset) -> None:
    sizes = {"train": 1000, "val": 200, "test": 500}
    assert list(biased.splits) == ["train", "val", "test"]
    for name, split in biased.splits.items():
        assert split.x.shape == (sizes[name], 3, 28, 28)
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64 and split.b.dtype == torch.int64
        assert split.b.shape == (sizes[name], 1)
        assert 0.0 <= float(split.x.min()) and float(split.x.max()) <= 1.0
    assert biased.num_classes == 10
    assert biased.bias_cardinalities == [10]
    assert biased.bias_names == ["color"]
    assert biased.input_shape == (3, 28, 28)
    assert biased.source == "builtin:biased-digits?rho=0.99&seed=0&n=1000"


def test_biased_digits_rho_in_train_and_unbiased_eval(biased: Dataset) -> None:
    assert agreement(biased.splits["train"]) == pytest.approx(0.99, abs=0.015)
    for name in ("val", "test"):
        assert agreement(biased.splits[name]) == pytest.approx(0.1, abs=0.06)
        assert torch.bincount(biased.splits[name].b[:, 0], minlength=10).min() > 0


def test_biased_digits_lower_rho() -> None:
    ds = open_dataset("builtin:biased-digits?rho=0.5&n=1000&seed=3")
    assert agreement(ds.splits["train"]) == pytest.approx(0.5, abs=0.06)


def test_background_colour_is_the_bias_label(biased: Dataset) -> None:
    split = biased.splits["train"]
    corner = split.x[:, :, 0, 0]  # the digit never reaches the corner
    assert torch.allclose(corner, PALETTE[split.b[:, 0]], atol=0.06)
    centre = split.x[:, :, 10:18, 10:18].amax(dim=(2, 3)).min(dim=1).values
    assert float(centre.mean()) > 0.7  # a light stroke crosses the centre of most digits


def test_builtin_is_deterministic_and_seeded() -> None:
    a = open_dataset("builtin:biased-digits?n=200&seed=5&size=16")
    b = open_dataset("builtin:biased-digits?n=200&seed=5&size=16")
    c = open_dataset("builtin:biased-digits?n=200&seed=6&size=16")
    assert a.splits["train"].x.shape == (200, 3, 16, 16)
    for name in ("train", "val", "test"):
        assert torch.equal(a.splits[name].x, b.splits[name].x)
        assert torch.equal(a.splits[name].b, b.splits[name].b)
    assert not torch.equal(a.splits["train"].x, c.splits["train"].x)
    assert not torch.equal(a.splits["train"].y, c.splits["train"].y)


def test_train_and_test_sources_are_disjoint() -> None:
    _, labels = _shipped_digits()
    train, test = _source_pools(labels, seed=0)
    assert len(set(train.tolist()) & set(test.tolist())) == 0
    assert len(train) + len(test) == 1797
    assert len(train) == pytest.approx(0.7 * 1797, abs=10)


def test_multicolor_digits(multicolor: Dataset) -> None:
    train = multicolor.splits["train"]
    assert train.x.shape == (2000, 3, 20, 20)
    assert train.b.shape == (2000, 2)
    assert multicolor.bias_names == ["left_color", "right_color"]
    assert multicolor.bias_cardinalities == [10, 10]
    assert agreement(train, 0) == pytest.approx(0.99, abs=0.015)
    assert agreement(train, 1) == pytest.approx(0.8, abs=0.03)
    both = float(((train.b[:, 0] == train.y) & (train.b[:, 1] == train.y)).float().mean())
    assert both == pytest.approx(0.99 * 0.8, abs=0.03)  # drawn independently
    assert torch.allclose(train.x[:, :, 0, 0], PALETTE[train.b[:, 0]], atol=0.06)
    assert torch.allclose(train.x[:, :, 0, -1], PALETTE[train.b[:, 1]], atol=0.06)
    for name in ("val", "test"):
        for j in (0, 1):
            assert agreement(multicolor.splits[name], j) == pytest.approx(0.1, abs=0.06)


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("builtin:biased-digits?foo=1", "unknown parameter 'foo'"),
        ("builtin:biased-digits?rho_left=0.5", "unknown parameter 'rho_left'"),
        ("builtin:biased-digits?rho=0", "'rho' must be in (0, 1]"),
        ("builtin:biased-digits?rho=1.5", "'rho' must be in (0, 1]"),
        ("builtin:biased-digits?rho=nan", "'rho' must be in (0, 1]"),
        ("builtin:biased-digits?n=50", "'n' must be >= 100"),
        ("builtin:biased-digits?n=abc", "'n' must be an integer"),
        ("builtin:biased-digits?size=4", "'size' must be between 8 and 224"),
        ("builtin:biased-digits?size=300", "'size' must be between 8 and 224"),
        ("builtin:biased-digits?seed=1&seed=2", "given twice"),
        ("builtin:multicolor-digits?rho_right=2", "'rho_right' must be in (0, 1]"),
        ("builtin:fashion?n=100", "unknown builtin dataset 'fashion'"),
    ],
)
def test_builtin_bad_parameters(uri: str, needle: str) -> None:
    with pytest.raises(DatasetError, match=re.escape(needle)):
        open_dataset(uri)


# --------------------------------------------------------------------------- tensor bundles


def make_arrays(n: int = 40, k: int = 2, tokens: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    arrays: dict[str, torch.Tensor] = {}
    for split, rows in (("train", n), ("val", n // 2), ("test", n // 2)):
        if tokens:
            arrays[f"{split}_x"] = torch.randint(0, 50, (rows, 7), generator=g)
        else:
            arrays[f"{split}_x"] = torch.rand(rows, 3, 4, 4, generator=g)
        arrays[f"{split}_y"] = torch.arange(rows) % 3
        b = torch.stack([torch.arange(rows) % 2, (torch.arange(rows) // 2) % 4], dim=1)
        arrays[f"{split}_b"] = b[:, :k] if k > 1 else b[:, 0]
    return arrays


def write_bundle(path: Path, arrays: dict[str, object]) -> Path:
    if path.suffix == ".pt":
        torch.save(arrays, path)
    elif path.suffix == ".npz":
        np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in arrays.items()}, str(path))
    return path


FORMATS = [".pt", ".npz", ".safetensors"]


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("k", [1, 2])
def test_bundle_round_trip(tmp_path: Path, suffix: str, k: int) -> None:
    arrays = make_arrays(k=k)
    arrays["notes_extra"] = torch.zeros(3)  # unknown keys are ignored
    path = write_bundle(tmp_path / f"data{suffix}", arrays)
    ds = open_dataset(str(path))
    assert ds.num_classes == 3
    assert ds.bias_cardinalities == [2, 4][:k]
    assert ds.bias_names == (["bias"] if k == 1 else ["bias_0", "bias_1"])
    for split in ("train", "val", "test"):
        got = ds.splits[split]
        assert torch.equal(got.x, arrays[f"{split}_x"])
        assert torch.equal(got.y, arrays[f"{split}_y"])
        assert got.b.shape == (len(got), k)
        assert torch.equal(got.b, arrays[f"{split}_b"].reshape(len(got), k))


@pytest.mark.parametrize("suffix", FORMATS)
def test_bundle_token_ids_stay_integer(tmp_path: Path, suffix: str) -> None:
    arrays = {k: v.to(torch.int32) if k.endswith("_x") else v for k, v in make_arrays(tokens=True).items()}
    ds = open_dataset(write_bundle(tmp_path / f"tok{suffix}", arrays).as_uri())
    assert ds.splits["train"].x.dtype == torch.int64
    assert ds.input_shape == (7,)


def test_bundle_train_only(tmp_path: Path) -> None:
    arrays = {k: v for k, v in make_arrays().items() if k.startswith("train")}
    ds = open_dataset(str(write_bundle(tmp_path / "t.npz", arrays)))
    assert list(ds.splits) == ["train"]


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("drop", ["train_b", "train_x", "val_b"])
def test_bundle_missing_key(tmp_path: Path, suffix: str, drop: str) -> None:
    arrays = make_arrays()
    del arrays[drop]
    path = write_bundle(tmp_path / f"m{suffix}", arrays)
    with pytest.raises(DatasetError, match=f"missing key '{drop}'") as info:
        open_dataset(str(path))
    assert info.value.param == drop


def test_bundle_without_any_split(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "e.pt", {"weights": torch.zeros(2)})
    with pytest.raises(DatasetError, match="missing key 'train_x'"):
        read_bundle(path)


def test_bundle_mismatched_lengths(tmp_path: Path) -> None:
    arrays = make_arrays(n=200)
    arrays["val_b"] = arrays["val_b"][:90]
    path = write_bundle(tmp_path / "l.safetensors", arrays)
    with pytest.raises(DatasetError) as info:
        open_dataset(str(path))
    assert str(info.value) == "val_b: has 90 rows but val_y has 100"
    assert info.value.param == "val_b"


def test_bundle_pt_not_a_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(DatasetError, match="dict of tensors"):
        open_dataset(str(path))


class NotATensor:
    pass


def test_bundle_pt_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "obj.pt"
    torch.save({"train_x": NotATensor()}, path)
    with pytest.raises(DatasetError, match="cannot read obj.pt"):
        open_dataset(str(path))


def test_bundle_pt_non_tensor_value(tmp_path: Path) -> None:
    arrays: dict[str, object] = dict(make_arrays())
    arrays["train_y"] = [0, 1, 2]
    path = tmp_path / "v.pt"
    torch.save(arrays, path)
    with pytest.raises(DatasetError, match="train_y: is a list, not a tensor"):
        open_dataset(str(path))


def test_bundle_npz_object_array_refused(tmp_path: Path) -> None:
    arrays = {k: np.asarray(v) for k, v in make_arrays().items()}
    arrays["train_y"] = np.array([{"a": 1}] * 40, dtype=object)
    path = tmp_path / "o.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match="cannot read o.npz"):
        open_dataset(str(path))


@pytest.mark.parametrize("suffix", FORMATS)
def test_bundle_corrupt_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(b"\x00garbage, not a tensor bundle" * 10)
    with pytest.raises(DatasetError, match=f"cannot read bad{suffix}"):
        open_dataset(str(path))


# --------------------------------------------------------------------------- validation (shared)


def raw_from(arrays: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return {s: (arrays[f"{s}_x"], arrays[f"{s}_y"], arrays[f"{s}_b"]) for s in ("train", "val", "test")}


def test_negative_label() -> None:
    arrays = make_arrays()
    arrays["test_y"] = arrays["test_y"] - 1
    with pytest.raises(DatasetError, match="negative label -1") as info:
        build_dataset(raw_from(arrays), source="t")
    assert info.value.param == "test_y"


def test_negative_bias() -> None:
    arrays = make_arrays()
    arrays["val_b"] = arrays["val_b"] - 5
    with pytest.raises(DatasetError, match="negative") as info:
        build_dataset(raw_from(arrays), source="t")
    assert info.value.param == "val_b"


def test_label_out_of_range_for_num_classes() -> None:
    with pytest.raises(DatasetError, match="label 2, out of range for num_classes=2") as info:
        build_dataset(raw_from(make_arrays()), source="t", num_classes=2)
    assert info.value.param == "train_y"
    assert build_dataset(raw_from(make_arrays()), source="t", num_classes=5).num_classes == 5


def test_fractional_labels_refused() -> None:
    arrays = make_arrays()
    arrays["train_y"] = arrays["train_y"].float() + 0.5
    with pytest.raises(DatasetError, match="train_y: holds non-integer values"):
        build_dataset(raw_from(arrays), source="t")


def test_single_bias_group() -> None:
    arrays = make_arrays(k=1)
    arrays["train_b"] = torch.zeros_like(arrays["train_b"])
    arrays["train_y"] = torch.zeros_like(arrays["train_y"])
    with pytest.raises(DatasetError, match="needs at least two bias groups"):
        build_dataset(raw_from(arrays), source="t")


def test_constant_bias_attribute() -> None:
    arrays = make_arrays(k=2)
    arrays["train_b"][:, 1] = 3
    with pytest.raises(DatasetError, match="needs at least two bias groups; bias attribute 'texture'"):
        build_dataset(raw_from(arrays), source="t", bias_names=["shape", "texture"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_x(tmp_path: Path, bad: float) -> None:
    arrays = make_arrays()
    arrays["val_x"][3, 1, 2, 2] = bad
    with pytest.raises(DatasetError, match="val_x: contains 1 NaN or infinite values") as info:
        open_dataset(str(write_bundle(tmp_path / "nan.npz", arrays)))
    assert info.value.param == "val_x"


def test_bias_count_must_match_across_splits() -> None:
    arrays = make_arrays(k=2)
    arrays["test_b"] = arrays["test_b"][:, 0]
    with pytest.raises(DatasetError, match="test_b: has 1 bias attributes but train_b has 2"):
        build_dataset(raw_from(arrays), source="t")


def test_sample_shape_must_match_across_splits() -> None:
    arrays = make_arrays()
    arrays["val_x"] = arrays["val_x"][:, :, :2]
    with pytest.raises(DatasetError, match="val_x: has sample shape"):
        build_dataset(raw_from(arrays), source="t")


def test_train_required_and_split_names() -> None:
    raw = raw_from(make_arrays())
    with pytest.raises(DatasetError, match="missing the 'train' split") as info:
        build_dataset({"val": raw["val"]}, source="t")
    assert info.value.param == "train"
    with pytest.raises(DatasetError, match="unknown split 'holdout'"):
        build_dataset({**raw, "holdout": raw["val"]}, source="t")


def test_bias_names_length_checked() -> None:
    with pytest.raises(DatasetError, match="bias_names: has 1 names but the data has 2"):
        build_dataset(raw_from(make_arrays(k=2)), source="t", bias_names=["only"])


# --------------------------------------------------------------------------- open_dataset dispatch


def test_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    with pytest.raises(DatasetError, match="nope.npz: no such file or directory"):
        open_dataset(str(missing))
    with pytest.raises(DatasetError, match="nope.npz"):
        open_dataset(missing.as_uri())


def test_data_roots(tmp_path: Path) -> None:
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    allowed.mkdir()
    other.mkdir()
    inside = write_bundle(allowed / "d.npz", make_arrays())
    outside = write_bundle(other / "d.npz", make_arrays())
    assert len(open_dataset(str(inside), data_roots=[allowed]).splits["train"]) == 40
    with pytest.raises(DatasetError, match="outside the allowed data roots"):
        open_dataset(str(outside), data_roots=[allowed])
    with pytest.raises(DatasetError, match="outside the allowed data roots"):
        open_dataset(str(allowed / ".." / "other" / "d.npz"), data_roots=[allowed])
    link = allowed / "link.npz"
    link.symlink_to(outside)
    with pytest.raises(DatasetError, match="outside the allowed data roots"):
        open_dataset(str(link), data_roots=[allowed])


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("s3://bucket/data.npz", "s3:// datasets need the service's storage settings"),
        ("https://example.com/d.npz", "unsupported dataset URI scheme 'https://'"),
        ("file://host/d.npz", "file:// URIs need an absolute local path"),
        ("", "no dataset given"),
    ],
)
def test_bad_uris(uri: str, needle: str) -> None:
    with pytest.raises(DatasetError, match=re.escape(needle)):
        open_dataset(uri)


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(DatasetError, match="unsupported dataset file"):
        open_dataset(str(path))


# --------------------------------------------------------------------------- image manifests

ROWS = [
    # path, label, split, bias_color, bias_bg
    ("img/a0.png", "dog", "train", "red", "grass"),
    ("img/a1.png", "cat", "train", "blue", "grass"),
    ("img/a2.png", "dog", "train", "blue", "sand"),
    ("img/a3.png", "cat", "train", "red", "sand"),
    ("img/a4.png", "dog", "train", "red", "grass"),
    ("img/b0.png", "cat", "val", "red", "sand"),
    ("img/b1.png", "dog", "val", "blue", "grass"),
    ("img/c0.png", "cat", "test", "blue", "grass"),
    ("img/c1.png", "dog", "test", "red", "sand"),
]
COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255)}


def make_folder(root: Path, rows: list[tuple[str, ...]] = ROWS, *, gray: bool = False, fmt: str = "csv") -> Path:
    """Write images (one of them a different size) and a manifest; the colour of each image is its bias_color."""
    for i, (rel, _label, _split, colour, _bg) in enumerate(rows):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        size = (10, 8) if i == 2 else (6, 4)  # (w, h); one odd size gets resized
        image = Image.new("L", size, 200) if gray else Image.new("RGB", size, COLOURS[colour])
        image.save(path)
    table = pd.DataFrame(rows, columns=["path", "label", "split", "bias_color", "bias_bg"])
    if fmt == "csv":
        table.to_csv(root / "manifest.csv", index=False)
    else:
        table.to_parquet(root / "manifest.parquet", index=False)
    return root


def check_folder_dataset(ds: Dataset) -> None:
    assert ds.bias_names == ["bias_color", "bias_bg"]
    assert ds.categories == {"label": ["cat", "dog"], "bias_color": ["blue", "red"], "bias_bg": ["grass", "sand"]}
    train = ds.splits["train"]
    assert train.x.shape == (5, 3, 4, 6) and train.x.dtype == torch.float32
    assert train.y.tolist() == [1, 0, 1, 0, 1]
    assert train.b.tolist() == [[1, 0], [0, 0], [0, 1], [1, 1], [1, 0]]
    assert float(train.x[0, 0].min()) == 1.0 and float(train.x[0, 2].max()) == 0.0  # red, in [0, 1]
    assert torch.allclose(train.x[2], torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 4, 6))
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [5, 2, 2]
    assert ds.num_classes == 2 and ds.bias_cardinalities == [2, 2]


def test_manifest_folder(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds")
    check_folder_dataset(open_dataset(str(root)))


def test_manifest_parquet_and_manifest_path(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", fmt="parquet")
    check_folder_dataset(open_dataset(str(root)))
    check_folder_dataset(open_dataset(str(root / "manifest.parquet")))


def test_manifest_grayscale(tmp_path: Path) -> None:
    ds = open_dataset(str(make_folder(tmp_path / "g", gray=True)))
    assert ds.input_shape == (1, 4, 6)
    assert torch.allclose(ds.splits["train"].x, torch.full_like(ds.splits["train"].x, 200 / 255))


def test_manifest_explicit_bias_columns(tmp_path: Path) -> None:
    ds = open_dataset(str(make_folder(tmp_path / "ds")), bias_columns=["bias_bg"])
    assert ds.bias_names == ["bias_bg"] and ds.splits["train"].b.shape == (5, 1)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
@pytest.mark.parametrize("wrapped", [False, True])
def test_manifest_tar(tmp_path: Path, suffix: str, wrapped: bool) -> None:
    root = make_folder(tmp_path / "ds")
    archive = tmp_path / f"ds{suffix}"
    with tarfile.open(archive, "w:gz" if suffix.endswith("gz") else "w") as tar:
        tar.add(root, arcname="ds" if wrapped else ".")
    ds = open_dataset(str(archive))
    check_folder_dataset(ds)
    assert ds.source == str(archive)


def test_manifest_missing_column(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds")
    table = pd.read_csv(root / "manifest.csv").drop(columns=["split"])
    table.to_csv(root / "manifest.csv", index=False)
    with pytest.raises(DatasetError, match="missing column 'split'"):
        open_dataset(str(root))
    with pytest.raises(DatasetError, match="missing column 'bias_shape'"):
        open_dataset(str(make_folder(tmp_path / "ds2")), bias_columns=["bias_shape"])


def test_manifest_without_bias_column(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds")
    table = pd.read_csv(root / "manifest.csv").drop(columns=["bias_color", "bias_bg"])
    table.to_csv(root / "manifest.csv", index=False)
    with pytest.raises(DatasetError, match="no bias column"):
        open_dataset(str(root))


def test_manifest_missing_image(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds")
    (root / "img" / "b1.png").unlink()
    with pytest.raises(DatasetError, match="missing image file 'img/b1.png'"):
        open_dataset(str(root))


def test_manifest_missing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no manifest.csv or manifest.parquet"):
        open_dataset(str(tmp_path / "empty"))


def test_manifest_bad_split_value(tmp_path: Path) -> None:
    rows = [*ROWS[:-1], ("img/c1.png", "dog", "holdout", "red", "sand")]
    with pytest.raises(DatasetError, match="'holdout' in row 9"):
        open_dataset(str(make_folder(tmp_path / "ds", rows)))


@pytest.mark.parametrize("evil", ["../secret.png", "img/../../secret.png", "/etc/passwd"])
def test_manifest_path_traversal(tmp_path: Path, evil: str) -> None:
    Image.new("RGB", (6, 4)).save(tmp_path / "secret.png")
    root = make_folder(tmp_path / "ds")
    table = pd.read_csv(root / "manifest.csv")
    table.loc[3, "path"] = evil
    table.to_csv(root / "manifest.csv", index=False)
    with pytest.raises(DatasetError, match="escapes the dataset root"):
        open_dataset(str(root))


def test_manifest_symlink_out_of_root(tmp_path: Path) -> None:
    Image.new("RGB", (6, 4)).save(tmp_path / "secret.png")
    root = make_folder(tmp_path / "ds")
    (root / "img" / "a3.png").unlink()
    (root / "img" / "a3.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(DatasetError, match="'img/a3.png' \\(row 4\\) escapes the dataset root"):
        open_dataset(str(root))


def add_member(tar: tarfile.TarFile, name: str, kind: bytes, link: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize(
    ("name", "kind", "link", "needle"),
    [
        ("../evil.txt", tarfile.REGTYPE, "", "escapes the archive root"),
        ("/tmp/evil.txt", tarfile.REGTYPE, "", "escapes the archive root"),
        ("ds/link.png", tarfile.SYMTYPE, "/etc/passwd", "is a link"),
        ("ds/hard.png", tarfile.LNKTYPE, "ds/manifest.csv", "is a link"),
        ("ds/fifo", tarfile.FIFOTYPE, "", "not a regular file"),
    ],
)
def test_tar_unsafe_members(tmp_path: Path, name: str, kind: bytes, link: str, needle: str) -> None:
    root = make_folder(tmp_path / "src" / "ds")
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="ds")
        add_member(tar, name, kind=kind, link=link)
    with pytest.raises(DatasetError, match=needle):
        open_dataset(str(archive))
    assert not (tmp_path / "evil.txt").exists()


def test_corrupt_tar(tmp_path: Path) -> None:
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DatasetError, match="cannot read archive broken.tar.gz"):
        open_dataset(str(archive))
