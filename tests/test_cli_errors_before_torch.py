"""A mistyped flag or path is refused before torch is imported: one line, exit code 2, at once.

Each case runs `lowrank` in a fresh interpreter and reports whether torch (or torchvision) was imported by
the time the command exited: importing them takes 5–9 s on a 2-core machine, which a user would otherwise
wait for every typo. The artifact directory here is two empty files: every case is refused before a file
is read.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Runs `lowrank ARGV` and prints, last, which heavy modules were imported.
_PROBE = (
    "import sys\nsys.argv = ['lowrank', *sys.argv[1:]]\nfrom lowrank_tool.cli import main\n"
    "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
    "heavy = [m for m in ('torch', 'torchvision') if m in sys.modules]\n"
    "print('HEAVY=' + ','.join(heavy) + f' CODE={code}')\n"
)

# (argv with ART = an artifact directory, OUT = an existing file, MISSING = a path that does not exist; message)
CASES = [
    (
        ["convert", "resnet20", "--energy", "0.9"],
        "is computed from trained weights; add --weights FILE --init decompose",
    ),
    (["convert", "resnet20", "--rank", "1.5"], "rank 1.5 is a fraction above 1"),
    (["convert", "resnet20", "--target-speedup", "2"], "--target-speedup needs --policy latency"),
    (["convert", "resnet20", "--latency-precision", "int8"], "a latency precision needs policy 'latency'"),
    (["convert", "resnet20", "--round-to", "0"], "round_to 0 must be a positive integer"),
    (["convert", "resnet20", "-o", "ART"], "already exists; choose another output directory or pass --force"),
    (["convert", "resnet20", "--input-size", "224x224"], "input size '224x224' is malformed; write CxHxW"),
    (["layers", "resnet20", "--input-size", "3x0x32"], "input size '3x0x32' has a zero dimension"),
    (["export", "ART", "--onnx", "m.onnx", "--input-size", "32"], "input size '32' is malformed"),
    (["bench", "ART", "--input-size", "3x32"], "input size '3x32' is malformed"),
    (["export", "MISSING", "--onnx", "m.onnx"], "is not a directory; point to a directory written by `lowrank convert"),
    (
        ["export", "ART", "--onnx", "m.onnx", "--batch", "0"],
        "batch 0 is not valid; use 'dynamic' or a positive integer",
    ),
    (["export", "ART", "--onnx", "m.onnx", "--fp16", "--int8"], "--fp16 and --int8 exclude each other"),
    (["export", "ART", "--onnx", "OUT"], "already exists; choose another --onnx file or pass --force"),
    (["export", "ART", "--onnx", "MISSING/m.onnx"], "does not exist; create it first"),
    (
        ["export", "ART", "--onnx", "m.onnx", "--int8", "--calib-data", "digits", "--int8-weight-bits", "6"],
        "int8 weight bits 6 must be 7",
    ),
    (["inspect", "MISSING"], "is not a directory; point to a directory written by `lowrank convert"),
    (["train", "MISSING"], "is not a directory; convert a model first"),
    (["train", "ART", "--epochs", "0"], "epochs 0 must be a positive integer"),
    (["train", "ART", "--method", "nope"], "method 'nope' is not known; expected one of deeptwist, dense, elrt, lrpet"),
    (["train", "--recipe", "MISSING.yaml"], "does not exist; see recipes/ for examples"),
    (["analyze", "MISSING/run"], "is not a directory; point to a directory written by `lowrank convert"),
    (["analyze", "MISSING.onnx"], "does not exist; point to an .onnx file written by `lowrank export`"),
    (["analyze", "OUT"], "is empty (0 bytes); re-export it with `lowrank export`"),
    (["analyze", "ART", "--input-size", "3x32x32"], "--input-size applies to a model name with --rank"),
    (["analyze", "resnet20", "--rank", "dense"], "--rank dense gives no ranks to analyse"),
    (["demo", "--epochs", "0"], "epochs 0 must be a positive integer"),
    (["demo", "--rank", "1.5"], "--rank 1.5 is a fraction above 1"),
    (["demo", "-o", "ART"], "already exists; choose another --output directory"),
    (["train", "--recipe", "BAD_TRAIN.yaml"], "epochs 0 must be a positive integer"),
    (["train", "--recipe", "BAD_CONVERT.yaml"], "BAD_CONVERT.yaml: rank 1.5 is a fraction above 1"),
    (["bench", "MISSING"], "does not exist; point to a directory from `lowrank convert -o DIR` or an .onnx file"),
    (["bench", "ART", "--batch", "0"], "batch '0' must be positive integers"),
    (["bench", "ART", "--batch", "1,,8"], "batch '1,,8' has an empty item; write the values with one comma"),
    (["bench", "ART", "--threads", "2,2"], "threads '2,2' lists 2 twice; give each value once"),
    (["bench", "ART", "--engine", "tensorflow"], "engine 'tensorflow' is not known"),
    (["bench", "ART", "--runs", "5", "--repeats", "9"], "repeats 9 must be an integer from 1 to runs (5)"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_refused_before_torch_is_imported(argv, message, tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    (art / "plan.json").write_text("")  # never read: every case is refused first
    (art / "model.safetensors").write_bytes(b"")
    (tmp_path / "out.onnx").write_bytes(b"")
    # recipes whose model would be converted into run/ (if their other values were right)
    (tmp_path / "BAD_TRAIN.yaml").write_text("model: resnet20\noutput: run\nepochs: 0\n")
    (tmp_path / "BAD_CONVERT.yaml").write_text("model: resnet20\noutput: run\nconvert:\n  rank: 1.5\n")
    paths = {"ART": str(art), "OUT": str(tmp_path / "out.onnx"), "MISSING": str(tmp_path / "missing")}
    args = [_fill(a, paths) for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    err = out.stderr
    assert out.stdout.strip().endswith("HEAVY= CODE=2"), (out.stdout[-300:], err[-500:])
    assert message in " ".join(err.split()), err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert not any(Path(tmp_path, "art").glob("*.tmp*"))


def _fill(arg: str, paths: dict[str, str]) -> str:
    """``MISSING/m.onnx`` → ``<tmp>/missing/m.onnx``: a placeholder at the start of an argument becomes its path."""
    for key, path in paths.items():
        if arg == key or arg.startswith((key + "/", key + ".")):
            return path + arg[len(key) :]
    return arg
