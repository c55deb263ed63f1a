//! Per-layer figures for batch norm in training: every batch-norm shape of MobileNetV2 at one
//! input size, forward and backward (ReLU6 fused where the network has it), the fastest of 31
//! rounds in milliseconds. Each round runs every layer's forward in the network's order, then
//! every backward in reverse, each on buffers of its own — as a training step meets them, with
//! the other layers' data passing through the caches in between (a layer timed alone, 31 times
//! on the same buffers, runs from cache and hides what its reads cost; docs/PERFORMANCE.md,
//! Change 19).
//!
//! `cargo bench -p deeptune-kernels --bench batchnorm_layers -- [size] [batch]` (default 112 16).

use std::time::Instant;

use deeptune_kernels::batchnorm::{self, NormGeometry};

/// (channels, input side divided by, how many the network has, ReLU6 after it).
const MOBILENET_V2: [(usize, usize, usize, bool); 19] = [
    (32, 2, 2, true),
    (16, 2, 1, false),
    (96, 2, 1, true),
    (96, 4, 1, true),
    (24, 4, 2, false),
    (144, 4, 3, true),
    (144, 8, 1, true),
    (32, 8, 3, false),
    (192, 8, 5, true),
    (192, 16, 1, true),
    (64, 16, 4, false),
    (384, 16, 8, true),
    (96, 16, 3, false),
    (576, 16, 5, true),
    (576, 32, 1, true),
    (160, 32, 3, false),
    (960, 32, 6, true),
    (320, 32, 1, false),
    (1280, 32, 1, true),
];

fn fill(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0 - 0.5).collect()
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (size, batch) = (args.first().copied().unwrap_or(112), args.get(1).copied().unwrap_or(16));
    println!("MobileNetV2 batch norms at {size} px, batch {batch}, {} threads", rayon::current_num_threads());
    struct Layer {
        g: NormGeometry,
        cap: Option<f32>,
        x: Vec<f32>,
        dy: Vec<f32>,
        gamma: Vec<f32>,
        beta: Vec<f32>,
        stats: (Vec<f32>, Vec<f32>),
    }
    let layers: Vec<Layer> = MOBILENET_V2
        .iter()
        .map(|&(channels, divisor, _, relu6)| {
            let side = size.div_ceil(divisor);
            let g = NormGeometry { batch, channels, plane: side * side };
            let n = batch * channels * side * side;
            let (x, dy) = (fill(n, channels as u32), fill(n, 7 * channels as u32));
            let (gamma, beta) = (vec![1.0; channels], vec![0.1; channels]);
            let cap = relu6.then_some(6.0);
            let f = batchnorm::forward(&g, &x, &gamma, &beta, 1e-5, cap);
            Layer { g, cap, x, dy, gamma, beta, stats: (f.mean, f.variance) }
        })
        .collect();
    let mut fastest = vec![[f64::INFINITY; 2]; layers.len()];
    for _ in 0..31 {
        for (layer, best) in layers.iter().zip(&mut fastest) {
            let start = Instant::now();
            std::hint::black_box(batchnorm::forward(&layer.g, &layer.x, &layer.gamma, &layer.beta, 1e-5, layer.cap));
            best[0] = best[0].min(start.elapsed().as_secs_f64() * 1e3);
        }
        for (layer, best) in layers.iter().zip(&mut fastest).rev() {
            let (mean, variance) = &layer.stats;
            let start = Instant::now();
            std::hint::black_box(batchnorm::backward(
                &layer.g,
                &layer.x,
                &layer.gamma,
                &layer.beta,
                mean,
                variance,
                1e-5,
                &layer.dy,
                layer.cap,
            ));
            best[1] = best[1].min(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    println!("{:<16} {:>5} {:>8} {:>8}", "layer", "count", "fwd ms", "bwd ms");
    let mut totals = [0.0; 2];
    for (&(channels, divisor, count, _), best) in MOBILENET_V2.iter().zip(&fastest) {
        let side = size.div_ceil(divisor);
        println!("{:<16} {count:>5} {:>8.3} {:>8.3}", format!("{channels} {side}x{side}"), best[0], best[1]);
        totals[0] += best[0] * count as f64;
        totals[1] += best[1] * count as f64;
    }
    println!("all batch norms: forward {:.1}, backward {:.1} ms per step", totals[0], totals[1]);
}
