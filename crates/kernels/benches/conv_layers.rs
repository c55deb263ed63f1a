//! Per-layer figures for the dense convolution kernels: every convolution shape of ResNet-18 (or
//! ResNet-50) at one input size, forward and backward, milliseconds and GFLOP/s. Shows which
//! layers the products lose time in; `tools/bench/conv_layers_torch.py` prints PyTorch's for the
//! same shapes.
//!
//! `cargo bench -p deeptune-kernels --bench conv_layers -- [size] [batch] [resnet50] [name]`
//! (default 112 16 ResNet-18; a name keeps only the layers whose name contains it, e.g.
//! `"layer4 3x3"`).

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

/// ResNet-50's convolutions at input size `s` (torchvision's v1.5: the stride on the 3×3), one line
/// per distinct shape.
fn resnet50_layers(s: usize) -> Vec<Layer> {
    let side = |d: usize| s.div_ceil(d);
    let mut layers = vec![("conv1 7x7/2", 3, 64, 7, 2, 3, s, 1)];
    // (stage name, width, blocks, stride, input side); a stage's output has 4 × width channels.
    let stages: [(&'static str, usize, usize, usize, usize); 4] = [
        ("layer1", 64, 3, 1, side(4)),
        ("layer2", 128, 4, 2, side(4)),
        ("layer3", 256, 6, 2, side(8)),
        ("layer4", 512, 3, 2, side(16)),
    ];
    let mut cin = 64;
    for (stage, w, blocks, stride, p_in) in stages {
        let p = p_in.div_ceil(stride);
        let name = |what: &str| -> &'static str { format!("{stage} {what}").leak() };
        layers.push((name(&format!("1x1 {cin}>{w}")), cin, w, 1, 1, 0, p_in, 1));
        if stride == 1 {
            layers.push((name("3x3"), w, w, 3, 1, 1, p, blocks));
        } else {
            layers.push((name("3x3/2"), w, w, 3, 2, 1, p_in, 1));
            layers.push((name("3x3"), w, w, 3, 1, 1, p, blocks - 1));
        }
        layers.push((name(&format!("1x1 {w}>{}", 4 * w)), w, 4 * w, 1, 1, 0, p, blocks));
        let down = if stride == 1 { format!("1x1 {cin}>{} down", 4 * w) } else { format!("1x1/2 {cin}>{}", 4 * w) };
        layers.push((name(&down), cin, 4 * w, 1, stride, 0, p_in, 1));
        layers.push((name(&format!("1x1 {}>{w}", 4 * w)), 4 * w, w, 1, 1, 0, p, blocks - 1));
        cin = 4 * w;
    }
    layers
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
    // "resnet50" picks the network; another word keeps only the layers whose name contains it.
    let words: Vec<String> = std::env::args().skip(1).filter(|a| a.parse::<usize>().is_err()).collect();
    let resnet50 = words.iter().any(|w| w == "resnet50");
    let only = words.into_iter().find(|w| w != "resnet50" && w != "resnet18");
    let (network, layers) =
        if resnet50 { ("ResNet-50", resnet50_layers(size)) } else { ("ResNet-18", resnet18_layers(size)) };
    println!("{network} convolutions at {size} px, batch {batch}, {} threads", rayon::current_num_threads());
    println!(
        "{:<22} {:>5} {:>9} {:>8} {:>9} {:>8} {:>10} {:>8} {:>8}",
        "layer", "count", "fwd ms", "GFLOP/s", "bwd ms", "GFLOP/s", "step ms", "dx ms", "dw ms"
    );
    let (mut total_fwd, mut total_bwd) = (0.0, 0.0);
    for (name, cin, cout, k, stride, pad, side, count) in layers {
        if only.as_deref().is_some_and(|word| !name.contains(word)) {
            continue;
        }
        let g = ConvGeometry::square(batch, [cin, cout], side, k, stride, pad);
        let fill = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0 - 0.5)
                .collect()
        };
        let (x, w, dy) = (fill(g.x_len(), 1), fill(g.weight_len(), 2), fill(g.y_len(), 3));
        let flops = 2.0 * (batch * cout * g.out_h * g.out_w * cin * k * k) as f64;
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
            "{name:<22} {count:>5} {fwd:>9.2} {:>8.1} {bwd:>9.2} {:>8.1} {:>10.1} {input_only:>8.2} {weight_only:>8.2}",
            flops / fwd / 1e6,
            bwd_flops / bwd / 1e6,
            (fwd + bwd) * count as f64
        );
    }
    println!("all convolutions: forward {total_fwd:.1} ms, backward {total_bwd:.1} ms per step");
}
