"""PyTorch's figures for the shapes of `cargo bench -p deeptune-kernels --bench conv_layers`:
every convolution of ResNet-18 at one input size, forward and backward (input and weight
gradients; the stem's weight only), median milliseconds and GFLOP/s, 2 threads.

    python tools/bench/conv_layers_torch.py [size] [batch]
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


def median_ms(f, reps=7):
    f()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        f()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[reps // 2]


def main():
    args = [int(a) for a in sys.argv[1:]]
    size = args[0] if args else 112
    batch = args[1] if len(args) > 1 else 16
    torch.set_num_threads(2)
    print(f"ResNet-18 convolutions at {size} px, batch {batch}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'layer':<14} {'count':>5} {'fwd ms':>9} {'GFLOP/s':>8} {'bwd ms':>9} {'GFLOP/s':>8} {'step ms':>10}")
    total_fwd = total_bwd = 0.0
    for name, cin, cout, k, stride, pad, side, count in layers(size):
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

        f = median_ms(fwd)
        # the backward timing includes one forward; subtract it so the column is the backward alone
        b = max(median_ms(bwd) - f, 1e-3)
        bwd_flops = flops * (2 if want_input else 1)
        total_fwd += f * count
        total_bwd += b * count
        print(f"{name:<14} {count:>5} {f:>9.2f} {flops / f / 1e6:>8.1f} {b:>9.2f} {bwd_flops / b / 1e6:>8.1f} {(f + b) * count:>10.1f}")
    print(f"all convolutions: forward {total_fwd:.1f} ms, backward {total_bwd:.1f} ms per step")


if __name__ == "__main__":
    main()
