"""`import asrkd` exposes the public API: every advertised name resolves to the real object."""

import importlib

import pytest

import asrkd


@pytest.mark.parametrize("name", sorted(asrkd._LAZY))
def test_every_lazy_name_is_the_object_its_module_defines(name):
    module = importlib.import_module(asrkd._LAZY[name])
    assert getattr(asrkd, name) is getattr(module, name)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Trainr'"):
        asrkd.Trainr  # noqa: B018


def test_entry_functions_are_listed():
    importlib.import_module("asrkd.train")  # a submodule import must not shadow a function
    importlib.import_module("asrkd.distill")
    for name in ("train_model", "distill_model", "transcribe", "export", "load_checkpoint", "Contract"):
        assert name in asrkd.__all__ and callable(getattr(asrkd, name))
