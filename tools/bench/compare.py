#!/usr/bin/env python3
"""Ours against PyTorch, case by case, in alternating rounds: the ratio a noisy machine can show.

On a shared machine the same binary moves by 10-30 % between runs a minute apart (neighbours on
the host), so one run of each benchmark after the other cannot place a case within 15 % of 1.0.
This script runs every case (model, mode, size) as a pair of processes — PyTorch's reference and
ours, one case each — for several rounds, alternating which goes first, and reports per case the
median img/s of each engine, the ratio of the medians and the range of the rounds' paired ratios.
Both engines then meet the same neighbours, in turn.

    .venv-torch/bin/python tools/bench/compare.py --models resnet18 --modes train --sizes 112 \
        --rounds 3 > pairs.jsonl

Every run's JSON line (the benchmarks' own, plus `round`) goes to stdout; the markdown table goes
to stderr at the end. Run from the repository root with the Python that has torch (and timm for
EfficientNet-Lite). Ours runs through `cargo bench` (built once before the first round) unless
`--ours` names the benchmark's executable.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
TORCH_REFERENCE = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench", "torch_reference.py"))
TORCH_REFERENCE_LITE = os.path.join(HERE, "torch_reference_lite.py")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet18,resnet50,mobilenet_v2,efficientnet_lite0")
    p.add_argument("--modes", default="train,infer")
    p.add_argument("--sizes", default="224,112")
    p.add_argument("--rounds", type=int, default=3, help="pairs of runs per case")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--ours", help="the throughput benchmark's executable (default: cargo bench)")
    p.add_argument("--python", default=sys.executable, help="the Python that has torch")
    p.add_argument("--reference", default=TORCH_REFERENCE, help="torch_reference.py")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def common_flags(args, model, mode, size):
    return [
        "--models", model, "--modes", mode, "--sizes", str(size), "--batch", str(args.batch),
        "--threads", str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--optimizer", args.optimizer,
    ]


def torch_command(args, model, mode, size):
    if model.startswith("efficientnet_lite"):
        script = [TORCH_REFERENCE_LITE, "--reference", args.reference]
    else:
        script = [args.reference]
    return [args.python, *script, *common_flags(args, model, mode, size)]


def ours_command(args, model, mode, size):
    if args.ours:
        runner = [args.ours]
    else:
        runner = ["cargo", "bench", "--quiet", "-p", "deeptune-engine", "--bench", "throughput", "--"]
    return [*runner, *common_flags(args, model, mode, size)]


def run_case(command, engine):
    """The one JSON line a benchmark prints for one case."""
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or len(lines) != 1:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{engine} failed (exit {done.returncode}): {' '.join(command)}")
    return json.loads(lines[0])


def machine():
    """The CPU the figures belong to: its model and the widest vector instructions it has."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    isa = [name for flag, name in [
        ("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512-BF16"), ("amx_tile", "AMX"),
    ] if flag in flags]
    return f"{model}, {os.cpu_count()} CPUs, {'/'.join(isa) or 'no AVX2'}"


def table(cases):
    rows = [
        f"Machine: {machine()}",
        "",
        "| model | mode | size | PyTorch img/s (median) | ours img/s (median) | ratio of medians "
        "| paired ratios, min–max |",
        "|---|---|---|---|---|---|---|",
    ]
    for (model, mode, size), runs in cases.items():
        torch_ips = [r["torch"] for r in runs]
        ours_ips = [r["ours"] for r in runs]
        paired = [o / t for o, t in zip(ours_ips, torch_ips)]
        ratio = statistics.median(ours_ips) / statistics.median(torch_ips)
        rows.append(
            f"| {model} | {mode} | {size} | {statistics.median(torch_ips):.2f} "
            f"| {statistics.median(ours_ips):.2f} | {ratio:.2f} | {min(paired):.2f}–{max(paired):.2f} |"
        )
    return "\n".join(rows)


def main(argv):
    args = parse_args(argv)
    if not args.ours:
        # Build once, outside every timed run.
        subprocess.run(
            ["cargo", "bench", "-p", "deeptune-engine", "--bench", "throughput", "--no-run"],
            cwd=ROOT, check=True,
        )
    cases = {}
    for model in args.models.split(","):
        for mode in args.modes.split(","):
            for size in [int(s) for s in args.sizes.split(",")]:
                runs = cases.setdefault((model, mode, size), [])
                for round_ in range(args.rounds):
                    order = ["torch", "ours"] if round_ % 2 == 0 else ["ours", "torch"]
                    figures = {}
                    for engine in order:
                        make = torch_command if engine == "torch" else ours_command
                        line = run_case(make(args, model, mode, size), engine)
                        line["round"] = round_
                        print(json.dumps(line), flush=True)
                        figures[engine] = line["images_per_s"]
                    runs.append(figures)
                    sys.stderr.write(
                        f"{model} {mode} {size} round {round_ + 1}/{args.rounds}: "
                        f"PyTorch {figures['torch']:.2f}, ours {figures['ours']:.2f} img/s\n"
                    )
    sys.stderr.write("\n" + table(cases) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
