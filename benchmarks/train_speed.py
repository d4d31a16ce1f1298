"""Training step time and memory: dense vs low-rank, both memory layouts, measured in one run.

Usage:
    python benchmarks/train_speed.py                         # resnet18, resnet18+cifar-stem, resnet20; 32x32, batch 128
    python benchmarks/train_speed.py --models resnet18 --rank 0.3 --batch 128 --steps 20
    python benchmarks/train_speed.py --models resnet18 --user-loop --compile   # + the plain-PyTorch recipes

A model name may end in ``+cifar-stem`` (torchvision ResNets: :func:`lowrank_tool.zoo.cifar_stem_`, the
toolkit's setting for 32x32 images: 3x3 stride-1 stem, no max pool). For each model the dense network
and its rank-R conversion (ELRT random init, orthogonality penalty included in the step, as the
trainer runs it) are each timed in NCHW (contiguous) and channels-last layout. All four
configurations take turns step by step, so they see the same machine load; the table reports median
step times and two ratios:

* **trainer default**: each model in the layout ``lowrank train`` picks (``--memory-format auto``:
  channels-last for low-rank models on CPU, contiguous for dense ones);
* **best vs best**: each model in whichever layout was faster for it here.

With ``--user-loop`` the plain-PyTorch loop a user writes around ``lr.convert`` is timed beside the trainer's
layouts: ``weights_channels_last`` (only the model moved to channels-last, images left NCHW: what a user who
adds one line gets) and, with ``--compile``, ``compiled_channels_last`` (``torch.compile`` of the
channels-last model, channels-last images; compilation happens in the warm-up steps and is not timed).
The ratios then include **user loop, best**: each model in its fastest configuration, and **as converted**:
the low-rank model in the layout ``lr.convert`` hands it back in (``memory_format="auto"``: channels-last on
the CPU) against the dense model as the user has it (NCHW), images NCHW: the README's own-loop recipe
with no layout line at all. The trainer-default and as-converted ratios also come as the median of the
per-step ratios with their range and the 95 % confidence interval of that median (``paired``; from 6
steps), the steps having run back to back: a target such as "≤ 0.45× dense" is met when the interval's
upper end is at or below it.

Memory is the bytes of parameters + gradients + SGD momentum + the activations autograd saves for the
backward pass (counted with saved-tensor hooks: exact and device-independent). Writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
from _arguments import at_least, run_main
from _results import run_meta, write_result
from torch import nn

import lowrank_tool as lr
from lowrank_tool.layers.memory_format import (
    MEMORY_FORMAT_NAMES,
    apply_memory_format,
    layout_name,
    memory_format_name,
    resolve_memory_format,
)
from lowrank_tool.methods.elrt import DEFAULT_ORTH_WEIGHT, orthogonality_penalty
from lowrank_tool.runtime import paired_speedup
from lowrank_tool.zoo import cifar_stem_

#: configuration name -> (model layout, image layout, compiled)
CONFIGS = {
    "contiguous": (torch.contiguous_format, torch.contiguous_format, False),
    "channels_last": (torch.channels_last, torch.channels_last, False),
    "weights_channels_last": (torch.channels_last, torch.contiguous_format, False),
    "compiled_channels_last": (torch.channels_last, torch.channels_last, True),
}


def build(spec: str) -> nn.Module:
    name, _, variant = spec.partition("+")
    model = lr.build_model(name, num_classes=10)
    if variant == "cifar-stem":
        cifar_stem_(model)
    elif variant:
        raise SystemExit(f"unknown model variant {variant!r} in {spec!r}; allowed: +cifar-stem")
    return model


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    params = {p.data_ptr() for p in model.parameters()}
    return sum(v for k, v in seen.items() if k not in params)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet18+cifar-stem", "resnet20"])
    parser.add_argument("--rank", type=float, default=0.3)
    parser.add_argument("--batch", type=at_least(1), default=128)
    parser.add_argument("--size", type=at_least(1), default=32)
    parser.add_argument(
        "--steps", type=at_least(1), default=10, help="timed steps per configuration (after 2 warm-up steps)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--user-loop", action="store_true", help="also time the plain-PyTorch recipes")
    parser.add_argument("--compile", action="store_true", help="with --user-loop: also torch.compile (slow to warm up)")
    parser.add_argument("--json", default="benchmarks/results/train_speed.json")
    args = parser.parse_args()
    device = torch.device(args.device)

    configs = ["contiguous", "channels_last"]
    if args.user_loop:
        configs += ["weights_channels_last"] + (["compiled_channels_last"] if args.compile else [])
    rows = []
    for spec in args.models:
        torch.manual_seed(0)
        dense = build(spec).to(device)
        low = lr.convert(dense, rank=args.rank, input_size=(3, args.size, args.size)).to(device)
        low_layout = memory_format_name(low)  # the layout convert hands it back in
        x = torch.randn(args.batch, 3, args.size, args.size, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        nets = {"dense": dense, "lowrank": low}
        # one copy per configuration, kept in its layout (a compiled model must not see its strides change)
        runs: dict[tuple[str, str], tuple[nn.Module, nn.Module, torch.optim.Optimizer]] = {}
        for key, net in nets.items():
            for config in configs:
                model_layout, _, use_compiled = CONFIGS[config]
                model = apply_memory_format(copy.deepcopy(net), model_layout).train()
                opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                runs[(key, config)] = (model, torch.compile(model) if use_compiled else model, opt)
        times: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
        for step in range(
            args.steps + 2
        ):  # 2 warm-up rounds (compilation too), then every configuration once per round
            for (key, config), (model, forward, opt) in runs.items():
                xs = x.contiguous(memory_format=CONFIGS[config][1])
                sync(device)
                t0 = time.perf_counter()
                loss = nn.functional.cross_entropy(forward(xs), y)
                if key == "lowrank":
                    loss = loss + orthogonality_penalty(model, weight=DEFAULT_ORTH_WEIGHT)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sync(device)
                if step >= 2:
                    times[(key, config)].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        result: dict = {"model": spec, "rank": args.rank, "batch": args.batch, "size": args.size, "device": str(device)}
        for key, model in nets.items():
            apply_memory_format(model, torch.contiguous_format)
            n_params = sum(p.numel() for p in model.parameters())
            act = saved_activation_bytes(model, x, y)
            default = layout_name(resolve_memory_format("auto", model, device))
            best = min(MEMORY_FORMAT_NAMES, key=lambda f: med[(key, f)])
            result[key] = {
                "step_s": {c: med[(key, c)] for c in configs},
                "user_loop_best": min(configs, key=lambda c: med[(key, c)]),
                "trainer_default_layout": default,
                "best_layout": best,
                "params": n_params,
                "memory_mb": (3 * 4 * n_params + act) / 2**20,
                "activation_mb": act / 2**20,
            }
        d, lo = result["dense"], result["lowrank"]
        result["time_ratio_trainer_default"] = (
            lo["step_s"][lo["trainer_default_layout"]] / d["step_s"][d["trainer_default_layout"]]
        )
        result["time_ratio_best_vs_best"] = lo["step_s"][lo["best_layout"]] / d["step_s"][d["best_layout"]]
        result["time_ratio_contiguous"] = lo["step_s"]["contiguous"] / d["step_s"]["contiguous"]
        result["memory_ratio"] = lo["memory_mb"] / d["memory_mb"]
        pairs = {"trainer_default": (lo["trainer_default_layout"], d["trainer_default_layout"])}
        if args.user_loop:
            for config in configs[2:]:
                result[f"time_ratio_{config}"] = lo["step_s"][config] / d["step_s"][config]
            result["time_ratio_user_loop_best"] = lo["step_s"][lo["user_loop_best"]] / d["step_s"][d["user_loop_best"]]
            converted_layout = "weights_channels_last" if low_layout == "channels_last" else "contiguous"
            lo["as_converted_layout"] = low_layout
            result["time_ratio_as_converted"] = lo["step_s"][converted_layout] / d["step_s"]["contiguous"]
            pairs["as_converted"] = (converted_layout, "contiguous")
        result["paired"] = {}
        for name, (low_config, dense_config) in pairs.items():
            p = paired_speedup(times[("lowrank", low_config)], times[("dense", dense_config)])
            ci = None if p.ci_low is None else [p.ci_low, p.ci_high]
            result["paired"][name] = {"ratio": p.speedup, "min": p.low, "max": p.high, "ci": ci, "steps": p.rounds}
        rows.append(result)
        ms = {k: {f: 1000 * v for f, v in result[k]["step_s"].items()} for k in nets}
        print(
            f"{spec:20s} dense {ms['dense']['contiguous']:7.1f} / {ms['dense']['channels_last']:7.1f} ms (NCHW / channels-last) | "
            f"rank {args.rank} {ms['lowrank']['contiguous']:7.1f} / {ms['lowrank']['channels_last']:7.1f} ms | "
            f"time x{result['time_ratio_trainer_default']:.2f} (trainer default), x{result['time_ratio_best_vs_best']:.2f} (best vs best), "
            f"x{result['time_ratio_contiguous']:.2f} (both NCHW) | memory x{result['memory_ratio']:.2f}"
            + "".join(
                f" | {c}: dense {ms['dense'][c]:.1f} ms, low-rank {ms['lowrank'][c]:.1f} ms, x{result[f'time_ratio_{c}']:.2f}"
                for c in configs[2:]
            )
            + "".join(
                f" | paired {k}: x{v['ratio']:.2f} ({v['min']:.2f}-{v['max']:.2f}"
                + (f"; 95% CI {v['ci'][0]:.2f}-{v['ci'][1]:.2f})" if v["ci"] else ")")
                for k, v in result["paired"].items()
            ),
            flush=True,
        )

    print()
    print(
        f"| model | dense step (NCHW / channels-last) | rank-{args.rank:g} step (NCHW / channels-last) | ratio, trainer default | ratio, best vs best | ratio, both NCHW | memory ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        d, lo = r["dense"]["step_s"], r["lowrank"]["step_s"]
        print(
            f"| {r['model']} | {1000 * d['contiguous']:.0f} / {1000 * d['channels_last']:.0f} ms | {1000 * lo['contiguous']:.0f} / {1000 * lo['channels_last']:.0f} ms | "
            f"{r['time_ratio_trainer_default']:.2f}x | {r['time_ratio_best_vs_best']:.2f}x | {r['time_ratio_contiguous']:.2f}x | {r['memory_ratio']:.2f}x |"
        )
    meta = run_meta(
        "train_speed.py",
        processor=platform.processor(),
        threads=torch.get_num_threads(),
        steps=args.steps,
        configs={
            c: {"model": str(CONFIGS[c][0]), "images": str(CONFIGS[c][1]), "compiled": CONFIGS[c][2]} for c in configs
        },
    )
    print(f"wrote {write_result(args.json, {'meta': meta, 'rows': rows})}")


if __name__ == "__main__":
    run_main(main)
