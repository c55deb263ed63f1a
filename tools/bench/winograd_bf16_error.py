"""Relative error of a 3x3 convolution (256 channels, random data, He-scaled filters) computed by
Winograd F(2x2,3x3) and F(4x4,3x3) with the transformed operands rounded to bfloat16 (float32
sums), against the exact result, beside the direct convolution with bfloat16 operands.

Why: a larger Winograd tile saves products (F(4x4,3x3): 36 per 16 outputs against F(2x2,3x3)'s
16 per 4), but its transforms' constants amplify the operands' rounding. This is the estimate
docs/PERFORMANCE.md (Change 22) cites for not building it for the bfloat16 path.

    python tools/bench/winograd_bf16_error.py
"""
import numpy as np

CHANNELS = 256
TILES = 400
rng = np.random.default_rng(0)


def to_bf16(a):
    """Rounds float32 values to bfloat16 (to nearest even), kept as float32."""
    bits = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


def relative_errors(bt, g, at, m):
    """(Winograd's, the direct path's) RMS error relative to the exact output, for tiles of m x m
    outputs with the transforms Bt (input), G (filters) and At (output)."""
    n = m + 2
    patches = rng.standard_normal((TILES, CHANNELS, n, n)).astype(np.float32)
    filters = (rng.standard_normal((CHANNELS, 3, 3)) * np.sqrt(2 / (9 * CHANNELS))).astype(np.float32)

    def direct(d, w):
        out = np.zeros((TILES, m, m))
        for ky in range(3):
            for kx in range(3):
                window = d[:, :, ky:ky + m, kx:kx + m].astype(np.float64)
                out += np.einsum("tcij,c->tij", window, w[:, ky, kx].astype(np.float64))
        return out

    exact = direct(patches, filters)
    u = np.einsum("ak,ckl,bl->cab", g, filters, g).astype(np.float32)
    v = np.einsum("ai,tcij,bj->tcab", bt, patches, bt).astype(np.float32)
    products = np.einsum("cab,tcab->tab", to_bf16(u).astype(np.float64), to_bf16(v).astype(np.float64))
    winograd = np.einsum("ia,tab,jb->tij", at, products, at)
    direct_bf16 = direct(to_bf16(patches), to_bf16(filters))

    def error(y):
        return np.sqrt(((y - exact) ** 2).mean() / (exact**2).mean())

    return error(winograd), error(direct_bf16)


F2 = (
    np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float),
    np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]),
    np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float),
    2,
)
F4 = (
    np.array(
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        float,
    ),
    np.array(
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ]
    ),
    np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], float),
    4,
)

for name, transforms in [("F(2x2,3x3)", F2), ("F(4x4,3x3)", F4)]:
    winograd, direct = relative_errors(*transforms)
    print(f"{name}: Winograd in bfloat16 {winograd:.2e}, direct in bfloat16 {direct:.2e} ({winograd / direct:.1f}x)")
