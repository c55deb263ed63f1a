"""PyTorch's figures for the shapes of `cargo bench -p deeptune-kernels --bench conv_layers`:
every convolution of ResNet-18 (or ResNet-50) at one input size, forward and backward (input and
weight gradients; the stem's weight only), median milliseconds and GFLOP/s, 2 threads.

    python tools/bench/conv_layers_torch.py [size] [batch] [resnet50] [name]
"""
import math
import sys
import time

import torch
import torch.nn.functional as F


def layers(s):
    side = lambda d: math.ceil(s / d)
    return [
        ("conv1 7x7/2", 3, 64, 7, 2, 3, s, 1),
        ("layer1 3x3", 64, 64, 3, 1, 1, side(4), 4),
        ("layer2 3x3/2", 64, 128, 3, 2, 1, side(4), 1),
        ("layer2 1x1/2", 64, 128, 1, 2, 0, side(4), 1),
        ("layer2 3x3", 128, 128, 3, 1, 1, side(8), 3),
        ("layer3 3x3/2", 128, 256, 3, 2, 1, side(8), 1),
        ("layer3 1x1/2", 128, 256, 1, 2, 0, side(8), 1),
        ("layer3 3x3", 256, 256, 3, 1, 1, side(16), 3),
        ("layer4 3x3/2", 256, 512, 3, 2, 1, side(16), 1),
        ("layer4 1x1/2", 256, 512, 1, 2, 0, side(16), 1),
        ("layer4 3x3", 512, 512, 3, 1, 1, side(32), 3),
    ]


def resnet50_layers(s):
    """One line per distinct shape; torchvision's v1.5 (the stride on the 3x3)."""
    side = lambda d: math.ceil(s / d)
    out = [("conv1 7x7/2", 3, 64, 7, 2, 3, s, 1)]
    cin = 64
    for stage, w, blocks, stride, p_in in [
        ("layer1", 64, 3, 1, side(4)),
        ("layer2", 128, 4, 2, side(4)),
        ("layer3", 256, 6, 2, side(8)),
        ("layer4", 512, 3, 2, side(16)),
    ]:
        p = math.ceil(p_in / stride)
        out.append((f"{stage} 1x1 {cin}>{w}", cin, w, 1, 1, 0, p_in, 1))
        if stride == 1:
            out.append((f"{stage} 3x3", w, w, 3, 1, 1, p, blocks))
        else:
            out.append((f"{stage} 3x3/2", w, w, 3, 2, 1, p_in, 1))
            out.append((f"{stage} 3x3", w, w, 3, 1, 1, p, blocks - 1))
        out.append((f"{stage} 1x1 {w}>{4 * w}", w, 4 * w, 1, 1, 0, p, blocks))
        down = f"1x1 {cin}>{4 * w} down" if stride == 1 else f"1x1/2 {cin}>{4 * w}"
        out.append((f"{stage} {down}", cin, 4 * w, 1, stride, 0, p_in, 1))
        out.append((f"{stage} 1x1 {4 * w}>{w}", 4 * w, w, 1, 1, 0, p, blocks - 1))
        cin = 4 * w
    return out


def median_ms(f, reps=7):
    f()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        f()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[reps // 2]


def main():
    args = [int(a) for a in sys.argv[1:] if a.isdigit()]
    words = [a for a in sys.argv[1:] if not a.isdigit()]
    size = args[0] if args else 112
    batch = args[1] if len(args) > 1 else 16
    resnet50 = "resnet50" in words
    only = next((w for w in words if w not in ("resnet50", "resnet18")), None)
    torch.set_num_threads(2)
    network = "ResNet-50" if resnet50 else "ResNet-18"
    print(f"{network} convolutions at {size} px, batch {batch}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'layer':<22} {'count':>5} {'fwd ms':>9} {'GFLOP/s':>8} {'bwd ms':>9} {'GFLOP/s':>8} {'step ms':>10} {'dx ms':>8} {'dw ms':>8}")
    total_fwd = total_bwd = 0.0
    for name, cin, cout, k, stride, pad, side, count in (resnet50_layers if resnet50 else layers)(size):
        if only is not None and only not in name:
            continue
        want_input = name != "conv1 7x7/2"
        x = torch.rand(batch, cin, side, side) - 0.5
        w = torch.rand(cout, cin, k, k) - 0.5
        x.requires_grad_(want_input)
        w.requires_grad_(True)
        y = F.conv2d(x, w, stride=stride, padding=pad)
        dy = torch.rand_like(y) - 0.5
        out = y.shape[-1]
        flops = 2.0 * batch * cout * out * out * cin * k * k

        def fwd():
            with torch.no_grad():
                F.conv2d(x, w, stride=stride, padding=pad)

        def bwd():
            y = F.conv2d(x, w, stride=stride, padding=pad)
            torch.autograd.grad(y, [x, w] if want_input else [w], dy)

        def grad_of(wanted):
            def run():
                y = F.conv2d(x, w, stride=stride, padding=pad)
                torch.autograd.grad(y, wanted, dy)
            return run

        f = median_ms(fwd)
        # the backward timings include one forward; subtract it so the columns are the backward alone
        b = max(median_ms(bwd) - f, 1e-3)
        dx = max(median_ms(grad_of([x])) - f, 1e-3) if want_input else 0.0
        dw = max(median_ms(grad_of([w])) - f, 1e-3)
        bwd_flops = flops * (2 if want_input else 1)
        total_fwd += f * count
        total_bwd += b * count
        print(f"{name:<22} {count:>5} {f:>9.2f} {flops / f / 1e6:>8.1f} {b:>9.2f} {bwd_flops / b / 1e6:>8.1f} {(f + b) * count:>10.1f} {dx:>8.2f} {dw:>8.2f}")
    print(f"all convolutions: forward {total_fwd:.1f} ms, backward {total_bwd:.1f} ms per step")


if __name__ == "__main__":
    main()
