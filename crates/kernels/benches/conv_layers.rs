//! Per-layer figures for the dense convolution kernels: every convolution shape of ResNet-18 at
//! one input size, forward and backward, milliseconds and GFLOP/s. Shows which layers the
//! products lose time in; `tools/bench/conv_layers_torch.py` prints PyTorch's for the same shapes.
//!
//! `cargo bench -p deeptune-kernels --bench conv_layers -- [size] [batch] [name]` (default 112 16;
//! a name keeps only the layers whose name contains it, e.g. `"layer4 3x3"`).

use std::time::Instant;

use deeptune_kernels::conv::{self, ConvGeometry};

/// (name, in channels, out channels, kernel, stride, padding, input side, how many the network
/// has).
type Layer = (&'static str, usize, usize, usize, usize, usize, usize, usize);

/// ResNet-18's convolutions at input size `s`.
fn resnet18_layers(s: usize) -> Vec<Layer> {
    let side = |d: usize| s.div_ceil(d);
    vec![
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
}

fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up: scratch buffers, page faults
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[reps / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (size, batch) = (args.first().copied().unwrap_or(112), args.get(1).copied().unwrap_or(16));
    // A word among the arguments keeps only the layers whose name contains it ("layer4").
    let only: Option<String> = std::env::args().skip(1).find(|a| a.parse::<usize>().is_err());
    println!("ResNet-18 convolutions at {size} px, batch {batch}, {} threads", rayon::current_num_threads());
    println!(
        "{:<14} {:>5} {:>9} {:>8} {:>9} {:>8} {:>10} {:>8} {:>8}",
        "layer", "count", "fwd ms", "GFLOP/s", "bwd ms", "GFLOP/s", "step ms", "dx ms", "dw ms"
    );
    let (mut total_fwd, mut total_bwd) = (0.0, 0.0);
    for (name, cin, cout, k, stride, pad, side, count) in resnet18_layers(size) {
        if only.as_deref().is_some_and(|word| !name.contains(word)) {
            continue;
        }
        let out = (side + 2 * pad - k) / stride + 1;
        let g = ConvGeometry {
            batch,
            in_channels: cin,
            out_channels: cout,
            in_h: side,
            in_w: side,
            out_h: out,
            out_w: out,
            kernel: [k, k],
            stride: [stride, stride],
            padding: [pad, pad],
            dilation: [1, 1],
        };
        let fill = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0 - 0.5)
                .collect()
        };
        let (x, w, dy) = (fill(g.x_len(), 1), fill(g.weight_len(), 2), fill(g.y_len(), 3));
        let flops = 2.0 * (batch * cout * out * out * cin * k * k) as f64;
        let want_input = name != "conv1 7x7/2"; // the stem's input is the image
        let reps = 7;
        let fwd = median_ms(reps, || {
            std::hint::black_box(conv::forward(&g, &x, &w));
        });
        let bwd = median_ms(reps, || {
            std::hint::black_box(conv::backward(&g, &x, &w, &dy, want_input, true));
        });
        // The two halves alone, to see which one a layer loses time in.
        let input_only = if want_input {
            median_ms(reps, || {
                std::hint::black_box(conv::backward(&g, &x, &w, &dy, true, false));
            })
        } else {
            0.0
        };
        let weight_only = median_ms(reps, || {
            std::hint::black_box(conv::backward(&g, &x, &w, &dy, false, true));
        });
        let bwd_flops = flops * if want_input { 2.0 } else { 1.0 };
        total_fwd += fwd * count as f64;
        total_bwd += bwd * count as f64;
        println!(
            "{name:<14} {count:>5} {fwd:>9.2} {:>8.1} {bwd:>9.2} {:>8.1} {:>10.1} {input_only:>8.2} {weight_only:>8.2}",
            flops / fwd / 1e6,
            bwd_flops / bwd / 1e6,
            (fwd + bwd) * count as f64
        );
    }
    println!("all convolutions: forward {total_fwd:.1} ms, backward {total_bwd:.1} ms per step");
}
