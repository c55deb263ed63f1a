//! Training and inference throughput of the engine's models on the CPU `flex` backend, measured
//! the same way as the PyTorch reference (`../shared/bench/torch_reference.py`): median of
//! `--steps` timed steps after `--warmup` warm-up steps, a fixed random batch, float32, NCHW,
//! random init, 1000 classes, `--threads` threads. One JSON line per case on stdout, with the
//! reference's fields. See docs/PERFORMANCE.md.
//!
//! ```text
//! cargo bench -p deeptune-engine --bench throughput -- --models resnet18,resnet50 --sizes 224,112
//! cargo bench -p deeptune-engine --bench throughput -- --compare torch.jsonl > ours.jsonl
//! ```

use std::io::Write;
use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use deeptune_engine::models::{Architecture, Classifier, ImageClassifier};
use deeptune_engine::train::optim::{FusedAdamW, FusedLamb, FusedSgd};

/// The deeptune binary's allocator, so the bench measures what users run.
#[global_allocator]
static ALLOCATOR: deeptune_engine::allocator::Allocator = deeptune_engine::allocator::Allocator;

const ENGINE: &str = "deeptune-burn-0.22.1-flex";
const NUM_CLASSES: usize = 1000;
const SEED: u64 = 0;

const USAGE: &str = "\
usage: cargo bench -p deeptune-engine --bench throughput -- [options]
  --models LIST      resnet18,resnet50,mobilenet_v2,efficientnet_b0,efficientnet_lite0 (any Architecture name)
  --modes LIST       train,infer
  --sizes LIST       224,112 (square input side in pixels)
  --batch N          16
  --steps N          5 timed steps (the median is reported)
  --warmup N         2 untimed steps first
  --threads N        2 (size of the global rayon pool flex computes on; 0 = rayon's default)
  --optimizer NAME   sgd (lr 0.01, momentum 0.9) | adamw (lr 1e-3, torch defaults) |
                     lamb (lr 1e-3, the A1 template's settings; torch.optim has no LAMB)
  --precision NAME   float32 | bfloat16 (the convolutions' products in bfloat16 with float32
                     sums, on AVX-512-BF16 CPUs; refused elsewhere). Also DEEPTUNE_PRECISION=bf16
  --compare FILE     the reference's JSON lines (torch_reference.py's stdout): after the run,
                     print a markdown table of both and their ratio to stderr";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Train,
    Infer,
}

#[derive(Clone, Copy, PartialEq)]
enum Opt {
    Sgd,
    AdamW,
    Lamb,
}

struct Args {
    models: Vec<(String, Architecture)>,
    modes: Vec<Mode>,
    sizes: Vec<usize>,
    batch: usize,
    steps: usize,
    warmup: usize,
    threads: usize,
    optimizer: Opt,
    bfloat16: bool,
    compare: Option<String>,
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn number(flag: &str, v: &str) -> usize {
    v.trim().parse().unwrap_or_else(|_| fail(&format!("{flag}: '{v}' is not a non-negative integer")))
}

fn architecture(name: &str) -> Architecture {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .unwrap_or_else(|_| fail(&format!("unknown model '{name}'")))
}

fn parse_args() -> Args {
    let mut args = Args {
        models: Vec::new(),
        modes: vec![Mode::Train, Mode::Infer],
        sizes: vec![224, 112],
        batch: 16,
        steps: 5,
        warmup: 2,
        threads: 2,
        optimizer: Opt::Sgd,
        bfloat16: deeptune_kernels::bf16::enabled(),
        compare: None,
    };
    let mut models = "resnet18,resnet50,mobilenet_v2,efficientnet_b0,efficientnet_lite0".to_string();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        // `cargo bench` passes `--bench` to harness-less benchmarks; libtest-style filters are ignored too.
        if arg == "--bench" {
            continue;
        }
        if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if !flag.starts_with("--") {
            fail(&format!("unexpected argument '{arg}'"));
        }
        let value = inline.or_else(|| it.next()).unwrap_or_else(|| fail(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--models" => models = value,
            "--modes" => {
                args.modes = value
                    .split(',')
                    .map(|m| match m.trim() {
                        "train" => Mode::Train,
                        "infer" => Mode::Infer,
                        other => fail(&format!("unknown mode '{other}'")),
                    })
                    .collect()
            }
            "--sizes" => args.sizes = value.split(',').map(|s| number("--sizes", s)).collect(),
            "--batch" => args.batch = number(&flag, &value),
            "--steps" => args.steps = number(&flag, &value),
            "--warmup" => args.warmup = number(&flag, &value),
            "--threads" => args.threads = number(&flag, &value),
            "--optimizer" => {
                args.optimizer = match value.as_str() {
                    "sgd" => Opt::Sgd,
                    "adamw" => Opt::AdamW,
                    "lamb" => Opt::Lamb,
                    other => fail(&format!("unknown optimizer '{other}'")),
                }
            }
            "--precision" => {
                args.bfloat16 = match value.as_str() {
                    "float32" => false,
                    "bfloat16" => true,
                    other => fail(&format!("unknown precision '{other}'")),
                }
            }
            "--compare" => args.compare = Some(value),
            other => fail(&format!("unknown option '{other}'")),
        }
    }
    args.models = models
        .split(',')
        .map(|m| m.trim())
        .filter(|m| !m.is_empty())
        .map(|m| (m.to_string(), architecture(m)))
        .collect();
    if args.steps == 0 || args.batch == 0 || args.sizes.contains(&0) {
        fail("--steps, --batch and --sizes must be positive");
    }
    args
}

/// SplitMix64: a fixed, dependency-free source for the random batch.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller), like `torch.randn`.
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// A fixed batch: images ~ N(0, 1) `[batch, 3, size, size]` and labels uniform in 0..1000.
fn batch(batch: usize, size: usize, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let mut rng = Rng(SEED ^ (size as u64) << 32 ^ batch as u64);
    let pixels: Vec<f32> = (0..batch * 3 * size * size).map(|_| rng.normal()).collect();
    let labels: Vec<i64> = (0..batch).map(|_| (rng.next_u64() % NUM_CLASSES as u64) as i64).collect();
    (
        Tensor::from_data(TensorData::new(pixels, [batch, 3, size, size]), device),
        Tensor::from_data(TensorData::new(labels, [batch]), device),
    )
}

fn optimizer(opt: Opt) -> ModuleOptimizer {
    match opt {
        // The optimizers training uses, with torch.optim.SGD(lr=0.01, momentum=0.9)'s settings
        // (dampening 0, no weight decay)...
        Opt::Sgd => FusedSgd { weight_decay: None, momentum: Some((0.9, 0.0, false)) }.init(),
        // ...and torch.optim.AdamW(lr=1e-3)'s defaults: eps 1e-8, weight decay 0.01.
        Opt::AdamW => FusedAdamW { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8, weight_decay: 0.01 }.init(),
        // What the "ResNet strikes back" A1 template trains with (crates/worker/src/run.rs).
        Opt::Lamb => {
            FusedLamb { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-6, weight_decay: 0.01, use_trust_ratio: true }.init()
        }
    }
}

fn learning_rate(opt: Opt) -> f64 {
    match opt {
        Opt::Sgd => 0.01,
        Opt::AdamW | Opt::Lamb => 1e-3,
    }
}

/// Times `warmup + steps` steps; returns the timed steps' durations (s) and every step's loss.
fn run_case(arch: Architecture, mode: Mode, size: usize, args: &Args) -> (Vec<f64>, Vec<f64>) {
    let mut times = Vec::with_capacity(args.steps);
    let mut losses = Vec::new();
    match mode {
        Mode::Train => {
            let device = Device::flex().autodiff();
            device.seed(SEED);
            let mut model: Classifier = arch.build(NUM_CLASSES, &device);
            let (x, y) = batch(args.batch, size, &device);
            let loss_fn = CrossEntropyLossConfig::new().init(&device);
            let mut optim = optimizer(args.optimizer);
            let lr = learning_rate(args.optimizer);
            for i in 0..args.warmup + args.steps {
                let start = Instant::now();
                let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(lr, model, grads);
                // Reading the loss back and syncing makes sure the step's work is done, whatever
                // the backend's laziness.
                let value: f32 = loss.into_scalar();
                device.sync().expect("device sync");
                let dt = start.elapsed().as_secs_f64();
                losses.push(value as f64);
                if i >= args.warmup {
                    times.push(dt);
                }
            }
        }
        Mode::Infer => {
            let device = Device::flex();
            device.seed(SEED);
            let model = arch.build(NUM_CLASSES, &device).valid();
            let (x, _) = batch(args.batch, size, &device);
            for i in 0..args.warmup + args.steps {
                let start = Instant::now();
                let logits = model.forward(x.clone());
                let data = logits.into_data();
                device.sync().expect("device sync");
                let dt = start.elapsed().as_secs_f64();
                std::hint::black_box(data);
                if i >= args.warmup {
                    times.push(dt);
                }
            }
        }
    }
    (times, losses)
}

/// One case's result: the reference's fields, in its order.
#[derive(serde::Serialize)]
struct CaseResult {
    engine: &'static str,
    model: String,
    mode: &'static str,
    size: usize,
    batch: usize,
    threads: usize,
    /// The products' operands: "float32", or "bfloat16" (float32 sums, weights and activations).
    precision: &'static str,
    median_step_s: f64,
    images_per_s: f64,
    first_losses: Vec<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// Our result and the reference's, keyed by (model, mode, size, batch).
fn compare_table(path: &str, ours: &[serde_json::Value]) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return eprintln!("--compare: cannot read {path}: {e}"),
    };
    let reference: Vec<serde_json::Value> =
        text.lines().filter(|l| l.trim_start().starts_with('{')).filter_map(|l| serde_json::from_str(l).ok()).collect();
    let key = |v: &serde_json::Value| (v["model"].clone(), v["mode"].clone(), v["size"].clone(), v["batch"].clone());
    let mut out = String::from(
        "\n| model | mode | size | batch | reference img/s | deeptune img/s | ratio (deeptune/reference) |\n|---|---|---|---|---|---|---|\n",
    );
    for o in ours {
        let theirs = reference.iter().find(|r| key(r) == key(o));
        let ours_ips = o["images_per_s"].as_f64().unwrap_or(f64::NAN);
        let (their_cell, ratio) = match theirs.and_then(|r| r["images_per_s"].as_f64()) {
            Some(t) => (
                format!("{t:.2} ({})", theirs.unwrap()["engine"].as_str().unwrap_or("?")),
                format!("{:.2}", ours_ips / t),
            ),
            None => ("—".to_string(), "—".to_string()),
        };
        out += &format!(
            "| {} | {} | {} | {} | {} | {:.2} | {} |\n",
            o["model"].as_str().unwrap_or("?"),
            o["mode"].as_str().unwrap_or("?"),
            o["size"],
            o["batch"],
            their_cell,
            ours_ips,
            ratio
        );
    }
    eprint!("{out}");
}

fn main() {
    deeptune_engine::allocator::keep_freed_memory();
    let args = parse_args();

    // flex computes on rayon's global pool; size it before the first tensor operation.
    if args.threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(args.threads)
            .build_global()
            .expect("the global rayon pool was already initialised");
    }
    let threads = rayon::current_num_threads();
    if deeptune_kernels::bf16::set_enabled(args.bfloat16) != args.bfloat16 {
        fail("--precision bfloat16: this CPU has no AVX-512-BF16");
    }

    let mut results = Vec::new();
    let stdout = std::io::stdout();
    for (name, arch) in &args.models {
        for &mode in &args.modes {
            for &size in &args.sizes {
                let (times, losses) = run_case(*arch, mode, size, &args);
                let med = median(times);
                let result = CaseResult {
                    engine: ENGINE,
                    model: name.clone(),
                    mode: if mode == Mode::Train { "train" } else { "infer" },
                    size,
                    batch: args.batch,
                    threads,
                    precision: if args.bfloat16 { "bfloat16" } else { "float32" },
                    median_step_s: round(med, 4),
                    images_per_s: round(args.batch as f64 / med, 2),
                    first_losses: losses.iter().take(5).map(|l| round(*l, 4)).collect(),
                };
                let line = serde_json::to_string(&result).expect("serialisable");
                let mut lock = stdout.lock();
                writeln!(lock, "{line}").expect("stdout");
                lock.flush().expect("stdout");
                results.push(serde_json::to_value(&result).expect("serialisable"));
            }
        }
    }

    if let Some(path) = &args.compare {
        compare_table(path, &results);
    }
}
