"""The remembered list of model names: a mistyped name is refused before torch is imported, and the list only
ever refuses (a missing, stale or unreadable list leaves every name to the full lookup)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import lowrank_tool.model_names as model_names
from lowrank_tool import models
from lowrank_tool.errors import LowRankError

_PROBE = (
    "import sys\nsys.argv = ['lowrank', *sys.argv[1:]]\nfrom lowrank_tool.cli import main\n"
    "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
    "print('TORCH=' + str('torch' in sys.modules) + f' CODE={code}')\n"
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_building_the_full_list_remembers_torchvision_and_toolkit_names(cache, monkeypatch):
    monkeypatch.setattr(models, "_TV_CACHE", {})
    assert not model_names.names_file().exists()
    models.get_entry("resnet50")
    names = json.loads(model_names.names_file().read_text())
    assert {"resnet50", "vit_b_16", "fcn_resnet50", "resnet20", "resnet56"} <= set(names)
    assert model_names.names_file().parent == cache


@pytest.mark.parametrize(
    "argv",
    [["convert", "resnt50", "--rank", "0.3"], ["layers", "resnt50"], ["analyze", "resnt50", "--rank", "0.3"]],
    ids=["convert", "layers", "analyze"],
)
def test_a_mistyped_name_is_refused_before_torch_once_the_list_exists(cache, tmp_path, argv):
    model_names.remember(["resnet50", "resnet56", "resnet20", "vgg16"])
    before = sorted(tmp_path.iterdir())
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=os.environ
    )
    assert out.stdout.strip().endswith("TORCH=False CODE=2"), (out.stdout, out.stderr)
    assert out.stderr.startswith(
        "error: unknown model 'resnt50'; did you mean resnet50, resnet56, resnet20? run `lowrank models` for the list"
    )
    assert out.stderr.count("\n") == 1
    assert sorted(tmp_path.iterdir()) == before


def test_a_recipe_naming_a_mistyped_model_is_refused_before_torch(cache, tmp_path):
    model_names.remember(["resnet50", "resnet56", "resnet20"])
    (tmp_path / "r.yaml").write_text("model: resnt20\noutput: run\nepochs: 1\n")
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, "train", "--recipe", "r.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=os.environ,
    )
    assert out.stdout.strip().endswith("TORCH=False CODE=2"), (out.stdout, out.stderr)
    assert out.stderr.startswith("error: recipe r.yaml: unknown model 'resnt20'; did you mean resnet20")
    assert not (tmp_path / "run").exists()


def test_without_a_list_the_full_lookup_gives_the_same_message(cache, monkeypatch):
    monkeypatch.setattr(models, "_TV_CACHE", {})
    assert model_names.refuse_unknown("resnt50") is None  # no list: nothing decided here
    with pytest.raises(LowRankError) as slow:
        models.get_entry("resnt50")  # builds the full list, and remembers it
    with pytest.raises(LowRankError) as fast:
        model_names.refuse_unknown("resnt50")
    assert str(fast.value).startswith("unknown model 'resnt50'; did you mean resnet50")
    assert str(fast.value) == str(slow.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"{}", b"[]", b"[1, 2]", b'{"resnet50": 1}', b"\xff\xfe\x00", b"[" * 100_000],
    ids=["empty", "text", "object", "empty-list", "numbers", "mapping", "binary", "deep"],
)
def test_an_unreadable_list_is_ignored(cache, content):
    cache.mkdir()
    model_names.names_file().write_bytes(content)
    model_names.refuse_unknown("resnt50")  # not refused here: the full lookup decides


def test_a_list_that_is_a_directory_is_ignored_and_an_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE_DIR", str(tmp_path / "cache"))
    model_names.names_file().mkdir(parents=True)
    model_names.refuse_unknown("resnt50")
    model_names.remember(["resnet50"])  # cannot replace a directory: quietly not written
    assert model_names.names_file().is_dir()
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("LOWRANK_CACHE_DIR", str(tmp_path / "file"))  # the cache "directory" is a file
    model_names.remember(["resnet50"])
    model_names.refuse_unknown("resnt50")
    assert (tmp_path / "file").read_text() == "x"


def test_the_same_list_is_not_written_again(cache):
    model_names.remember(["resnet50", "resnet20"])
    path = model_names.names_file()
    os.utime(path, ns=(1, 1))
    model_names.remember(["resnet20", "resnet50"])
    assert path.stat().st_mtime_ns == 1
    model_names.remember(["resnet20", "resnet50", "vgg16"])
    assert path.stat().st_mtime_ns != 1 and "vgg16" in path.read_text()


def test_timm_names_and_factories_are_never_checked_against_the_list(cache):
    model_names.remember(["resnet50"])
    for name in ("timm/resnet18", "mypkg.nets:make_net", ""):
        model_names.refuse_unknown(name)
    with pytest.raises(LowRankError, match="did you mean resnet50"):
        model_names.refuse_unknown("resnet5")


def test_another_torchvision_or_toolkit_version_starts_a_new_list(cache, monkeypatch):
    model_names.remember(["resnet50"])
    before = model_names.names_file()
    monkeypatch.setattr(model_names, "version", lambda package: "99.0")
    assert model_names.names_file() != before
    model_names.refuse_unknown("resnt50")  # the old version's list does not speak for this one
    monkeypatch.undo()
    monkeypatch.setenv("LOWRANK_CACHE_DIR", str(cache))
    monkeypatch.setattr(model_names, "__version__", "99.0")
    assert model_names.names_file() != before
