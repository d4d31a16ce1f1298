"""The single sources of truth: ConvertOptions, the plan accessors, atomic files, the dataset records."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest
import torch

import lowrank_tool as lr
from lowrank_tool import LowRankError
from lowrank_tool.artifact import atomic_file, atomic_write_text
from lowrank_tool.data import DATASETS, RECORDS, DataSpec


def test_options_object_and_keywords_give_the_same_plan():
    opts = lr.ConvertOptions(rank=0.5, exclude=["layer1.0.conv1"], round_to=1)
    by_options = lr.plan("resnet20", options=opts)
    by_keywords = lr.plan("resnet20", rank=0.5, exclude=["layer1.0.conv1"], round_to=1)
    assert by_options.to_dict() == by_keywords.to_dict()
    assert by_options.layer("layer1.0.conv1").reason == "excluded (--exclude)"


def test_keywords_override_the_options_object_without_changing_it():
    opts = lr.ConvertOptions(rank=0.5, round_to=1)
    p = lr.plan("resnet20", options=opts, rank=0.25)
    assert p.policy["rank"] == 0.25 and p.layer("layer1.0.conv1").ranks == [4, 4]
    assert opts.rank == 0.5


def test_unknown_keyword_is_a_type_error_listing_the_fields():
    with pytest.raises(TypeError, match=r"'rnak'.*rank, format"):
        lr.convert("resnet20", rnak=0.3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"init": "svd"}, "init='svd' is not known"),
        ({"num_classes": 0}, "num_classes 0 must be a positive integer"),
        ({"model_kwargs": [1]}, "model_kwargs must be a mapping"),
        ({"target_speedup": 2.0}, "target_speedup needs policy 'latency'"),
        ({"policy": "latency", "target_speedup": 0.5}, "must be a number above 1"),
    ],
)
def test_options_are_validated_in_one_place(kwargs, match):
    with pytest.raises(LowRankError, match=match):
        lr.ConvertOptions(**kwargs)


def test_every_option_has_help_and_the_docstring_points_there():
    import dataclasses

    fields = [f for f in dataclasses.fields(lr.ConvertOptions) if f.init]
    assert len(fields) == 21
    assert all(len(lr.option_help(f.name)) > 20 for f in fields)
    with pytest.raises(KeyError):
        lr.option_help("rank_spec")  # derived, not an option


def test_plan_of_and_attach_plan():
    model = lr.convert("resnet20", rank=0.5)
    plan = lr.plan_of(model)
    assert plan is lr.summary(model) and plan.summary_line().startswith("resnet20: 18/19 convs low-rank")
    assert lr.plan_of(torch.nn.Linear(2, 2)) is None
    other = torch.nn.Sequential()
    assert lr.attach_plan(other, plan) is other and lr.plan_of(other) is plan
    with pytest.raises(LowRankError, match="needs a ConversionPlan"):
        lr.attach_plan(other, {"layers": []})


def test_atomic_file_replaces_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "out [1] é.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    with atomic_file(target, suffix=".json") as tmp:
        assert tmp.suffix == ".json" and tmp.parent == tmp_path
        tmp.write_text("new")
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_one_record_per_dataset():
    assert DATASETS == tuple(RECORDS) and len(DATASETS) == 8
    for name, record in RECORDS.items():
        assert record.name == name
        if record.in_memory:
            assert record.read is None and not record.layout
        else:
            assert record.read is not None and record.layout and record.mean_std is not None
            assert len(record.mean_std[0]) == (1 if record.grey else 3)
    assert RECORDS["svhn"].flip is False and RECORDS["cifar10"].flip is True
    with pytest.raises(LowRankError, match="did you mean .*'fashion-mnist'"):
        DataSpec.parse("fmnist:/x")


def test_old_data_module_path_still_imports_with_a_deprecation_warning():
    sys.modules.pop("lowrank_tool.train.data", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("lowrank_tool.train.data")
    assert old.build_loaders is importlib.import_module("lowrank_tool.data").build_loaders
    assert any(issubclass(w.category, DeprecationWarning) and "lowrank_tool.data" in str(w.message) for w in caught)


def test_an_input_size_is_a_string_or_integers_and_nothing_else():
    import numpy as np

    from lowrank_tool.input_size import parse_input_size

    assert parse_input_size(np.array([3, 32, 32])) == parse_input_size(torch.Size([3, 32, 32])) == (3, 32, 32)
    for bad in (5, [3, "a", 16], [3.0, 32, 32], {"c": 3}, [True, 32, 32]):
        with pytest.raises(LowRankError, match="must be 'CxHxW' or a list of 3 or 4 integers"):
            parse_input_size(bad)
