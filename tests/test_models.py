"""Loading archives and finding units, across formats and architectures."""

from __future__ import annotations

import zipfile

import pytest
import torch

from bise_core.backends import prepare
from bise_core.errors import ModelFormatError
from bise_core.models import detect_format, load_model
from bise_core.units import find_units


@pytest.mark.parametrize("fmt", ["torchscript", "traced", "export"])
def test_every_format_loads_to_the_same_function(archive_factory, tiny_data, fmt):
    path = archive_factory("cnn", fmt)
    x = tiny_data.splits["test"].x[:7]  # another batch size than the export example
    gm = load_model(path, tiny_data.splits["train"].x[:2]).graph_module
    reference = load_model(archive_factory("cnn", "torchscript"), x[:2]).graph_module
    torch.testing.assert_close(gm(x), reference(x))
    assert detect_format(path) == ("export" if fmt == "export" else "torchscript")


EXPECTED_UNITS = {
    # arch: (classifier, number of unit layers, gate placed after BatchNorm?)
    "cnn": ("fc", 3, True),
    "cnn-nobn": ("fc", 3, False),
    "mlp": ("fc", 2, False),
    "resnet18": ("fc", 20, True),
}


@pytest.mark.parametrize("arch", sorted(EXPECTED_UNITS))
def test_units_and_classifier_are_found(archive_factory, tiny_data, arch):
    gm = load_model(archive_factory(arch), tiny_data.splits["train"].x[:2]).graph_module
    graph = find_units(gm)
    classifier, layers, after_bn = EXPECTED_UNITS[arch]
    assert graph.classifier == classifier
    assert len(graph.units) == layers
    assert graph.num_classes == 10
    for unit in graph.units:
        bn_zeroed = all(".weight" in p or ".bias" in p for p in unit.zero_params)
        assert bn_zeroed
        assert (unit.gate_after != unit.node) == after_bn


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_transformer_feed_forward_units(archive_factory, tiny_data, fmt):
    """Scripted attention has control flow the FX converter refuses: the parameter backend
    takes over; the exported model is a plain graph."""
    example = tiny_data.splits["train"].x[:2]
    prepared = prepare(load_model(archive_factory("transformer", fmt), example), example)
    assert prepared.backend == ("torchscript_parameters" if fmt == "torchscript" else "fx")
    graph = prepared.units
    names = [u.name for u in graph.units]
    assert graph.classifier == "head"
    assert "ff1" in names and "ff2" in names
    ff1 = next(u for u in graph.units if u.name == "ff1")
    assert ff1.kind == "linear" and ff1.size == 128


def test_classifier_override_and_layer_filters(archive_factory, tiny_data):
    gm = load_model(archive_factory("mlp"), tiny_data.splits["train"].x[:2]).graph_module
    graph = find_units(gm, classifier="body.3")
    assert graph.classifier == "body.3" and [u.name for u in graph.units] == ["body.1"]
    assert [u.name for u in find_units(gm, exclude=r"body\.1$").units] == ["body.3"]
    with pytest.raises(Exception, match="no linear layer named 'nope'"):
        find_units(gm, classifier="nope")


def test_not_an_archive(tmp_path, tiny_data):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"definitely not a model")
    with pytest.raises(ModelFormatError, match="not a TorchScript"):
        load_model(bad, tiny_data.splits["train"].x[:2])


def test_plain_pickle_is_refused_with_advice(tmp_path, tiny_data):
    path = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ModelFormatError, match="torch.jit.save"):
        load_model(path, tiny_data.splits["train"].x[:2])


def test_corrupt_archive(tmp_path, archive_factory, tiny_data):
    path = tmp_path / "truncated.pt"
    data = archive_factory("cnn").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError):
        load_model(path, tiny_data.splits["train"].x[:2])


def test_zip_that_is_not_a_model(tmp_path, tiny_data):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(ModelFormatError, match="zip file but not"):
        load_model(path, tiny_data.splits["train"].x[:2])


def test_model_that_does_not_fit_the_inputs(archive_factory, tiny_data):
    wrong = torch.zeros(2, 1, 16, 16)  # one channel instead of three
    with pytest.raises(ModelFormatError, match="3 channels, but got 1"):
        load_model(archive_factory("cnn"), wrong)
