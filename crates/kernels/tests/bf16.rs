//! Convolutions with bfloat16 products (CPUs with AVX-512-BF16): forward, input and weight
//! gradients, through the direct, the Winograd and the tap-by-tap paths, against the same convolutions in
//! float32 — equal within bfloat16's rounding. A test binary of its own, because it turns the
//! process-wide switch on and off; one test, so nothing runs beside it.

use deeptune_kernels::bf16;
use deeptune_kernels::conv::{self, ConvGeometry};

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 20_001) as f32 / 10_000.0 - 1.0
        })
        .collect()
}

fn geometry(
    batch: usize,
    channels: [usize; 2],
    size: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> ConvGeometry {
    let out = (size + 2 * padding - kernel) / stride + 1;
    ConvGeometry {
        batch,
        in_channels: channels[0],
        out_channels: channels[1],
        in_h: size,
        in_w: size + 1,
        out_h: out,
        out_w: (size + 1 + 2 * padding - kernel) / stride + 1,
        kernel: [kernel, kernel],
        stride: [stride, stride],
        padding: [padding, padding],
        dilation: [1, 1],
    }
}

/// The largest difference relative to the largest float32 value.
fn relative_difference(float32: &[f32], bfloat16: &[f32]) -> f32 {
    let scale = float32.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    float32.iter().zip(bfloat16).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

#[test]
fn convolutions_in_bfloat16_match_float32_within_its_rounding() {
    if !bf16::supported() {
        eprintln!("skipped: this CPU has no AVX-512-BF16");
        return;
    }
    let cases = [
        // Winograd: forward, input gradient and (≥ 256 tiles) weight gradient.
        geometry(16, [64, 64], 8, 3, 1, 1),
        // Direct: a strided 3×3, a 1×1, a 7×7 stem.
        geometry(3, [5, 70], 9, 3, 2, 1),
        geometry(2, [40, 24], 6, 1, 1, 0),
        geometry(2, [3, 16], 20, 7, 2, 3),
        // A 4×4 plane: the gradients tap by tap (the forward stays direct in bfloat16).
        geometry(8, [40, 24], 4, 3, 1, 1),
        // Two blocks of input channels (80·9 rows of `col(x)`), chunks of several images: the
        // filters packed once per block for every chunk.
        geometry(8, [80, 16], 6, 3, 2, 1),
        // Pointwise, one image per chunk, its filters in two blocks of input channels.
        geometry(2, [600, 8], 5, 1, 1, 0),
        // Stride 1, chunks of several images: `col(x)` packed straight from the input, over
        // several blocks of `k` (a 3×3 of 80 channels, a pointwise of 600), planes narrower than
        // 16 columns.
        geometry(8, [80, 16], 5, 3, 1, 1),
        geometry(8, [600, 8], 3, 1, 1, 0),
        // Planes of 930 outputs, one image per chunk, in bands of rows: the input gradient's
        // `Wᵀ` packed once for every band and image.
        geometry(2, [8, 16], 60, 3, 2, 1),
        // One image in bands of rows at stride 1 (3×3 and 5×5): each band's `col(x)` read from
        // the input as it is packed.
        geometry(1, [8, 16], 30, 3, 1, 1),
        geometry(1, [4, 8], 30, 5, 1, 2),
        // One image on two threads: the backward cut by channels, its weight gradient from
        // patches (gathered, then loaded).
        geometry(1, [16, 24], 5, 3, 2, 1),
        geometry(1, [16, 24], 5, 3, 1, 1),
    ];
    for (i, g) in cases.iter().enumerate() {
        let x = values(g.x_len(), 3 * i as u64 + 1);
        let weight = values(g.weight_len(), 3 * i as u64 + 2);
        let dy = values(g.y_len(), 3 * i as u64 + 3);
        let run = |on: bool| {
            assert_eq!(bf16::set_enabled(on), on);
            let y = conv::forward(g, &x, &weight);
            let (dx, dw) = conv::backward(g, &x, &weight, &dy, true, true);
            [y, dx.unwrap(), dw.unwrap()]
        };
        let (float32, bfloat16) = (run(false), run(true));
        bf16::set_enabled(false);
        for (name, (a, b)) in ["forward", "input gradient", "weight gradient"].iter().zip(float32.iter().zip(&bfloat16))
        {
            let difference = relative_difference(a, b);
            eprintln!("case {i} {name}: {difference:.2e}");
            // bfloat16 keeps 8 significant bits (relative rounding 2⁻⁹ ≈ 2e-3 per operand); a wrong
            // layout or a lost block would be off by the values themselves.
            assert!(difference < 1e-2, "case {i} {name}: {difference}");
            // And the products did run in bfloat16.
            assert!(difference > 1e-5, "case {i} {name}: identical to float32");
        }
    }
}
