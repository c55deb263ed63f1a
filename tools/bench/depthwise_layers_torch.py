"""PyTorch's figures for the shapes of `cargo bench -p deeptune-kernels --bench depthwise_layers`:
every depthwise convolution of MobileNetV2 (or EfficientNet-Lite0) at one input size, forward,
input gradient and weight gradient (each by autograd.grad after a forward, the forward's time
subtracted), the fastest of 31 runs in milliseconds, 2 threads.

    python tools/bench/depthwise_layers_torch.py [size] [batch] [efficientnet_lite0]
"""
import math
import sys
import time

import torch


def mobilenet_v2_layers(s):
    side = lambda d: math.ceil(s / d)
    return [
        (32, 3, 1, side(2), 1),
        (96, 3, 2, side(2), 1),
        (144, 3, 1, side(4), 1),
        (144, 3, 2, side(4), 1),
        (192, 3, 1, side(8), 2),
        (192, 3, 2, side(8), 1),
        (384, 3, 1, side(16), 4),
        (576, 3, 1, side(16), 2),
        (576, 3, 2, side(16), 1),
        (960, 3, 1, side(32), 3),
    ]


def efficientnet_lite0_layers(s):
    side = lambda d: math.ceil(s / d)
    return [
        (32, 3, 1, side(2), 1),
        (96, 3, 2, side(2), 1),
        (144, 3, 1, side(4), 1),
        (144, 5, 2, side(4), 1),
        (240, 5, 1, side(8), 1),
        (240, 3, 2, side(8), 1),
        (480, 3, 1, side(16), 2),
        (480, 5, 1, side(16), 1),
        (672, 5, 1, side(16), 2),
        (672, 5, 2, side(16), 1),
        (1152, 5, 1, side(32), 3),
        (1152, 3, 1, side(32), 1),
    ]


def fastest_ms(f, reps=31):
    f()
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        f()
        best = min(best, (time.perf_counter() - start) * 1e3)
    return best


def main():
    numbers = [int(a) for a in sys.argv[1:] if a.isdigit()]
    size = numbers[0] if numbers else 112
    batch = numbers[1] if len(numbers) > 1 else 16
    lite = "efficientnet_lite0" in sys.argv[1:]
    torch.set_num_threads(2)
    network, layers = (
        ("EfficientNet-Lite0", efficientnet_lite0_layers(size)) if lite else ("MobileNetV2", mobilenet_v2_layers(size))
    )
    print(f"PyTorch {torch.__version__}: {network} depthwise convolutions at {size} px, batch {batch}, 2 threads")
    print(f"{'layer':<26} {'count':>5} {'fwd ms':>8} {'dx ms':>8} {'dw ms':>8}")
    totals = [0.0, 0.0, 0.0]
    for channels, k, stride, side, count in layers:
        conv = torch.nn.Conv2d(channels, channels, k, stride, k // 2, groups=channels, bias=False)
        x = torch.randn(batch, channels, side, side, requires_grad=True)
        dy = torch.randn_like(conv(x))
        fwd = fastest_ms(lambda: conv(x))
        dx = fastest_ms(lambda: torch.autograd.grad(conv(x), [x], dy)) - fwd
        dw = fastest_ms(lambda: torch.autograd.grad(conv(x), [conv.weight], dy)) - fwd
        out = (side + 2 * (k // 2) - k) // stride + 1
        name = f"{channels} {k}x{k}/{stride} {side}>{out}"
        print(f"{name:<26} {count:>5} {fwd:>8.3f} {dx:>8.3f} {dw:>8.3f}")
        for i, t in enumerate((fwd, dx, dw)):
            totals[i] += t * count
    print(
        "all depthwise convolutions: forward %.1f, input gradient %.1f, weight gradient %.1f ms per step" % tuple(totals)
    )


if __name__ == "__main__":
    main()
