//! Per-layer figures for the depthwise kernels: every depthwise convolution shape of MobileNetV2
//! (or EfficientNet-Lite0) at one input size, forward, input gradient and weight gradient, the
//! fastest of 31 runs in milliseconds. `tools/bench/depthwise_layers_torch.py` prints PyTorch's
//! for the same shapes. `DEEPTUNE_CONV=direct` takes the plane-by-plane kernels everywhere, to
//! compare them with the channels-interleaved ones (docs/PERFORMANCE.md, Change 18).
//!
//! `cargo bench -p deeptune-kernels --bench depthwise_layers -- [size] [batch] [efficientnet_lite0]`
//! (default 112 16 MobileNetV2).

use std::time::Instant;

use deeptune_kernels::conv::ConvGeometry;
use deeptune_kernels::depthwise;

/// (channels, kernel, stride, input side, how many the network has).
type Layer = (usize, usize, usize, usize, usize);

/// MobileNetV2's depthwise convolutions at input size `s` (3×3 throughout).
fn mobilenet_v2_layers(s: usize) -> Vec<Layer> {
    let side = |d: usize| s.div_ceil(d);
    vec![
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
}

/// EfficientNet-Lite0's at input size `s` (EfficientNet-B0's stages: 3×3 and 5×5).
fn efficientnet_lite0_layers(s: usize) -> Vec<Layer> {
    let side = |d: usize| s.div_ceil(d);
    vec![
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
}

fn fastest_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up: scratch buffers, page faults
    (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (size, batch) = (args.first().copied().unwrap_or(112), args.get(1).copied().unwrap_or(16));
    let lite = std::env::args().any(|a| a == "efficientnet_lite0");
    let (network, layers) = if lite {
        ("EfficientNet-Lite0", efficientnet_lite0_layers(size))
    } else {
        ("MobileNetV2", mobilenet_v2_layers(size))
    };
    println!("{network} depthwise convolutions at {size} px, batch {batch}, {} threads", rayon::current_num_threads());
    println!("{:<26} {:>5} {:>8} {:>8} {:>8}", "layer", "count", "fwd ms", "dx ms", "dw ms");
    let mut totals = [0.0; 3];
    for (channels, k, stride, side, count) in layers {
        let pad = k / 2;
        let g = ConvGeometry::square(batch, [channels, channels], side, k, stride, pad);
        let fill = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0 - 0.5)
                .collect()
        };
        let (x, w, dy) = (fill(g.x_len(), 1), fill(channels * k * k, 2), fill(g.y_len(), 3));
        let reps = 31;
        let times = [
            fastest_ms(reps, || {
                std::hint::black_box(depthwise::forward(&g, &x, &w, None));
            }),
            fastest_ms(reps, || {
                std::hint::black_box(depthwise::input_grad(&g, &w, &dy));
            }),
            fastest_ms(reps, || {
                std::hint::black_box(depthwise::weight_grad(&g, &x, &dy));
            }),
        ];
        let name = format!("{channels} {k}x{k}/{stride} {side}>{}", g.out_h);
        println!("{name:<26} {count:>5} {:>8.3} {:>8.3} {:>8.3}", times[0], times[1], times[2]);
        for (total, time) in totals.iter_mut().zip(times) {
            *total += time * count as f64;
        }
    }
    println!(
        "all depthwise convolutions: forward {:.1}, input gradient {:.1}, weight gradient {:.1} ms per step",
        totals[0], totals[1], totals[2]
    );
}
