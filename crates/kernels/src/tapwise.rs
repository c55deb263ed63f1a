//! 3×3, stride-1, padding-1 convolutions on small planes (ResNet's last stage: 4×4 pixels at
//! 112 px) as nine products, one per filter tap, each over only the outputs that tap reaches.
//!
//! Why: im2col's `col(x)` multiplies the padding's zeros like any other value, and on a 4×4 plane
//! 44 of each channel's 144 (output, tap) pairs fall in the padding — 31 % of the products' work
//! (on 7×7, 18 %). oneDNN's direct convolution skips them; ResNet-18's last-stage 3×3 layers
//! measured ~30 % slower here than there, forward and backward (docs/PERFORMANCE.md, Change 16).
//! Whether a tap reaches an output depends only on the output's place in the plane, so the
//! products can leave those pairs out if they run tap by tap.
//!
//! The outputs of all images are put in one order in which every tap reaches a few runs: grouped
//! by row class (first row, inner rows, last row), then column class (first, inner, last
//! column), then pixel, then image. Tap `(ky, kx)` reaches every row class but the first when
//! `ky = 0` (it reads the row above) and but the last when `ky = 2`, and likewise for columns; so
//! it reaches one run per row class, or a single run where it reaches every column class. The
//! values a tap reads, its shifted input `xs_t` in that order, come from the input transposed to
//! pixel-major (`[channel][pixel][image]`), where each run of a row is one copy. Then
//!
//! - forward: `y[:, run] += W_t · xs_t[:, run]` over the tap's runs, with `W_t` (output × input
//!   channels) the filters' values at tap `t`, gathered once per call;
//! - input gradient: the same convolution of the output gradient with the filters flipped and
//!   transposed (`W'_t[c][o] = W[o][c][8 − t]`);
//! - weight gradient: `dW_t = Σ_runs dy[:, run] · xs_t[:, run]ᵀ`.

use std::mem::MaybeUninit;
use std::ops::Range;

use gemm::Parallelism;
use rayon::prelude::*;

use crate::conv::{ConvGeometry, Epilogue, Scratch, View, cut_by_ranges, multiply, split_ranges};
use crate::simd::{assume_written, widest};

/// The center tap, which reaches every output: its product is the first, written, not added.
const CENTER: usize = 4;

/// Largest plane this path takes. On 4×4 planes (31 % padding) it measured faster than im2col
/// (ResNet-18's last stage at 112 px, 512 channels: forward ~10 %, input gradient ~25 %, weight
/// gradient ~5 %); on 7×7 (18 %) level or slower — its gathers and per-tap products cost about
/// what the padding does. 5×5 (25 %) is taken on that evidence, unmeasured.
const MAX_PLANE: usize = 25;

/// Most outputs per channel over the batch this path takes: it gathers the whole batch's shifted
/// input at once (`9 × channels × outputs` values: 19 MB at 512 channels and 1024 outputs, 64
/// images of 4×4) where im2col works a chunk of images at a time, so larger batches stay with
/// im2col rather than grow that without bound.
const MAX_OUTPUTS: usize = 2048;

/// Filters (output channels) per block of the weight gradient: the block's nine tap products
/// (`[filters][9][input channels]`, 1.2 MB at 512 input channels) stay near the core until they
/// are interleaved into the gradient's `[filters][input channels][9]`.
const FILTER_BLOCK: usize = 64;

/// Whether [`forward`] computes convolution `g`: where [`backward_applies`], and not where the
/// products run in bfloat16 — there they are twice as fast, so this path's gathers weigh double,
/// and on Zen 4 its forward measured slower than im2col (5.5–6.3 against 4.6–5.0 ms on
/// ResNet-18's last-stage layer at 112 px).
pub(crate) fn applies(g: &ConvGeometry) -> bool {
    backward_applies(g) && !crate::bf16::enabled()
}

/// Whether [`input_gradient`] and [`weight_gradient`] compute convolution `g`'s gradients: 3×3
/// filters at stride 1, padding 1 and output the size of the input, on planes of at least 2×2
/// and at most [`MAX_PLANE`] pixels, with 64 to [`MAX_OUTPUTS`] outputs per channel over the batch
/// (fewer make the products too narrow). In bfloat16 too: there the backward measured faster than
/// im2col's (11.9–12.7 against 13.8–15.0 ms on the layer above). `DEEPTUNE_CONV=direct` turns it
/// off, like Winograd.
pub(crate) fn backward_applies(g: &ConvGeometry) -> bool {
    g.kernel == [3, 3]
        && g.stride == [1, 1]
        && g.dilation == [1, 1]
        && g.padding == [1, 1]
        && g.out_h == g.in_h
        && g.out_w == g.in_w
        && g.out_h >= 2
        && g.out_w >= 2
        && g.out_plane() <= MAX_PLANE
        && (64..=MAX_OUTPUTS).contains(&(g.batch * g.out_plane()))
        && crate::winograd::enabled()
}

/// The order of the outputs (all images): class (row class × column class), then pixel
/// (row-major within the class's rectangle), then image.
struct Order {
    batch: usize,
    width: usize,
    /// Output rows of each row class: the first, the inner ones, the last.
    rows: [Range<usize>; 3],
    /// Output columns of each column class.
    cols: [Range<usize>; 3],
    /// Where class `(r, c)` starts.
    start: [[usize; 3]; 3],
    /// Outputs in all: `batch · plane`.
    len: usize,
}

impl Order {
    fn new(g: &ConvGeometry) -> Order {
        let (h, w) = (g.out_h, g.out_w);
        let rows = [0..1, 1..h - 1, h - 1..h];
        let cols = [0..1, 1..w - 1, w - 1..w];
        let mut start = [[0; 3]; 3];
        let mut at = 0;
        for r in 0..3 {
            for c in 0..3 {
                start[r][c] = at;
                at += g.batch * rows[r].len() * cols[c].len();
            }
        }
        Order { batch: g.batch, width: w, rows, cols, start, len: at }
    }

    /// Classes along one axis that filter offset `k` reaches: offset 0 reads the row (column)
    /// before, so not the first; offset 2 the one after, so not the last.
    fn reached(k: usize) -> Range<usize> {
        match k {
            0 => 1..3,
            1 => 0..3,
            _ => 0..2,
        }
    }

    /// The runs of outputs that tap `t` reaches, in order.
    fn runs(&self, t: usize) -> Vec<Range<usize>> {
        let (rows, cols) = (Self::reached(t / 3), Self::reached(t % 3));
        let mut runs: Vec<Range<usize>> = Vec::with_capacity(3);
        for r in rows {
            let last = cols.end - 1;
            let run = self.start[r][cols.start]..self.start[r][last] + self.class_len(r, last);
            if run.is_empty() {
                continue;
            }
            match runs.last_mut() {
                Some(previous) if previous.end == run.start => previous.end = run.end,
                _ => runs.push(run),
            }
        }
        runs
    }

    fn class_len(&self, r: usize, c: usize) -> usize {
        self.batch * self.rows[r].len() * self.cols[c].len()
    }
}

/// `src` (`[batch][channels][plane]`) as `[channels][plane][batch]`: one image's values of a
/// pixel side by side, so that a run of pixels of all images is one copy.
fn pixel_major(src: &[f32], batch: usize, channels: usize, plane: usize) -> Scratch {
    let mut out = Scratch::stale(channels * plane * batch);
    out.par_chunks_mut(plane * batch).with_min_len(8).enumerate().for_each(|(c, dst)| {
        for b in 0..batch {
            let values = &src[(b * channels + c) * plane..][..plane];
            for (p, &v) in values.iter().enumerate() {
                dst[p * batch + b] = v;
            }
        }
    });
    out
}

/// The values each of `taps` reads, `xs[(i · channels + c) · len + position]` for the `i`-th of
/// `taps`, from the pixel-major input `src` (`[channels][plane][batch]`). Only the positions a tap
/// reaches are written; the others are never read.
fn shifted(order: &Order, src: &[f32], channels: usize, taps: Range<usize>) -> Scratch {
    let plane_len = src.len() / channels.max(1);
    let mut xs = Scratch::stale(taps.len() * channels * order.len);
    xs.par_chunks_mut(order.len).with_min_len(16).enumerate().for_each(|(row, dst)| {
        let (t, c) = (taps.start + row / channels, row % channels);
        shifted_row(order, &src[c * plane_len..][..plane_len], t, |at| at, dst);
    });
    xs
}

/// [`shifted`] for all nine taps with each tap's runs back to back (no gaps where it does not
/// reach): tap `t`'s values at `xs[starts[t] + c · reach(t) + j]`, `j` its `j`-th reached
/// output, with `starts[9]` the total. A product over a tap's outputs is then one block of `k`.
fn shifted_compact(order: &Order, src: &[f32], channels: usize, runs: &[Vec<Range<usize>>]) -> (Scratch, [usize; 10]) {
    let plane_len = src.len() / channels.max(1);
    let mut starts = [0; 10];
    for t in 0..9 {
        starts[t + 1] = starts[t] + channels * reached(&runs[t]);
    }
    let mut xs = Scratch::stale(starts[9]);
    let mut rows = Vec::with_capacity(9 * channels);
    let mut rest = &mut xs[..];
    for (t, runs) in runs.iter().enumerate() {
        for c in 0..channels {
            let (row, after) = std::mem::take(&mut rest).split_at_mut(reached(runs));
            rows.push((t, c, row, runs));
            rest = after;
        }
    }
    rows.into_par_iter().with_min_len(16).for_each(|(t, c, dst, runs)| {
        // Output position → place in the tap's runs put back to back.
        let compact = |at: usize| {
            let mut before = 0;
            for run in runs {
                if run.contains(&at) {
                    return before + at - run.start;
                }
                before += run.len();
            }
            unreachable!("a position the tap reaches is in its runs")
        };
        shifted_row(order, &src[c * plane_len..][..plane_len], t, compact, dst);
    });
    (xs, starts)
}

/// Outputs in `runs`.
fn reached(runs: &[Range<usize>]) -> usize {
    runs.iter().map(Range::len).sum()
}

/// What tap `t` reads of one channel's pixel-major `plane` (`[pixel][image]`), each run of a row
/// of one class to `dst[place(output position)..]`.
#[inline]
fn shifted_row(order: &Order, plane: &[f32], t: usize, place: impl Fn(usize) -> usize, dst: &mut [f32]) {
    let (batch, w) = (order.batch, order.width);
    let (ky, kx) = (t / 3, t % 3);
    for r in Order::reached(ky) {
        for class_col in Order::reached(kx) {
            let cols = order.cols[class_col].clone();
            let run = cols.len() * batch;
            if run == 0 {
                // An empty class (the inner columns of a plane two wide) is in no run.
                continue;
            }
            let mut at = order.start[r][class_col];
            for oy in order.rows[r].clone() {
                // Input pixel (oy + ky − 1, cols.start + kx − 1): never before the plane, as the
                // reached classes exclude the first row (column) when ky (kx) is 0.
                let from = ((oy + ky - 1) * w + cols.start + kx - 1) * batch;
                let to = place(at);
                dst[to..to + run].copy_from_slice(&plane[from..from + run]);
                at += run;
            }
        }
    }
}

/// The filters by tap, `[out_channels][tap][in_channels]`: tap `t`'s matrix (output × input
/// channels) is then rows of contiguous values, 9 · in_channels apart, instead of every ninth
/// value of the weights; its transpose (for the input gradient) is a column-major view of it.
fn by_tap(weight: &[f32], in_channels: usize) -> Scratch {
    let mut filters = Scratch::stale(weight.len());
    filters.par_chunks_mut(9 * in_channels).zip(weight.par_chunks(9 * in_channels)).with_min_len(4).for_each(
        |(dst, src)| {
            widest(
                #[inline(always)]
                || {
                    // Each tap's values along the input channels, a strided read of one filter
                    // row (in L1) and a contiguous write.
                    for (t, dst) in dst.chunks_exact_mut(in_channels).enumerate() {
                        for (c, v) in dst.iter_mut().enumerate() {
                            *v = src[c * 9 + t];
                        }
                    }
                },
            )
        },
    );
    filters
}

/// The convolution's output (`y`, `[batch, out_channels, out_h, out_w]`, written in full), with
/// `epilogue` applied.
pub(crate) fn forward(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    y: &mut [MaybeUninit<f32>],
    epilogue: Option<&Epilogue>,
) {
    let (cin, cout) = (g.in_channels, g.out_channels);
    let filters = by_tap(weight, cin);
    // Tap t's matrix, output channels `rows` (its first `rows.start`).
    let tap = |t: usize, first: usize| View { data: &filters[(first * 9 + t) * cin..], row: 9 * cin, col: 1 };
    convolve(g, x, cin, tap, cout, y, epilogue);
}

/// The input gradient (`[batch, in_channels, in_h, in_w]`): the convolution of `out_grad` with the
/// filters flipped in both axes and input and output channels swapped.
pub(crate) fn input_gradient(g: &ConvGeometry, weight: &[f32], out_grad: &[f32]) -> Vec<f32> {
    let (cin, cout) = (g.in_channels, g.out_channels);
    let filters = by_tap(weight, cin);
    // Tap t of the flipped filters, `W'_t[c][o] = W[o][c][8 − t]`: the transpose of the filters'
    // tap 8 − t, input channels from `first` on.
    let tap = |t: usize, first: usize| View { data: &filters[(8 - t) * cin + first..], row: 1, col: 9 * cin };
    let mut grad = Vec::with_capacity(g.x_len());
    convolve(g, out_grad, cout, tap, cin, &mut grad.spare_capacity_mut()[..g.x_len()], None);
    // SAFETY: `convolve` wrote every element.
    unsafe { grad.set_len(g.x_len()) };
    grad
}

/// `out` (`[batch, out_channels, plane]`) = the 3×3 convolution of `src` (`[batch, in_channels,
/// plane]`, the same plane) with filters whose tap `t` is the matrix `tap(t, first)` (output ×
/// input channels, its rows from output channel `first` on).
fn convolve<'f>(
    g: &ConvGeometry,
    src: &[f32],
    in_channels: usize,
    tap: impl Fn(usize, usize) -> View<'f> + Sync,
    out_channels: usize,
    out: &mut [MaybeUninit<f32>],
    epilogue: Option<&Epilogue>,
) {
    let order = Order::new(g);
    let (len, plane, batch) = (order.len, g.out_plane(), g.batch);
    let xs = shifted(&order, &pixel_major(src, batch, in_channels, plane), in_channels, 0..9);
    let runs: Vec<Vec<Range<usize>>> = (0..9).map(|t| order.runs(t)).collect();
    let tap_order = std::iter::once(CENTER).chain((0..9).filter(|&t| t != CENTER));

    // The products in output order, `[out_channels][len]`, cut by output channels among the
    // threads.
    let mut product = Scratch::stale(out_channels * len);
    let ranges = split_ranges(out_channels, rayon::current_num_threads(), 16);
    let in_bf16 = crate::bf16::enabled();
    cut_by_ranges(&mut product, &ranges, len).into_par_iter().for_each(|(channels, part)| {
        for t in tap_order.clone() {
            let lhs = tap(t, channels.start);
            // In bfloat16 a tap's filters are packed once for its runs (up to three), not per run:
            // with products at twice float32's speed, repacking them cost a tenth of the layer.
            let packed = in_bf16.then(|| crate::bf16::PackedLeft::new(channels.len(), in_channels, lhs));
            for run in &runs[t] {
                let rhs = View { data: &xs[t * in_channels * len + run.start..], row: len, col: 1 };
                let accumulate = t != CENTER;
                let dst = &mut part[run.start..];
                match &packed {
                    Some(packed) => crate::bf16::multiply_packed(run.len(), dst, len, accumulate, packed, rhs),
                    None => {
                        let dst_row = len;
                        multiply(
                            channels.len(),
                            run.len(),
                            in_channels,
                            dst,
                            dst_row,
                            accumulate,
                            lhs,
                            rhs,
                            Parallelism::None,
                        )
                    }
                }
            }
        }
    });

    // Back to `[batch][out_channels][plane]`, the epilogue on each image while it is in cache.
    let image_len = out_channels * plane;
    out.par_chunks_mut(image_len).enumerate().for_each(|(b, image)| {
        for (o, dst) in image.chunks_exact_mut(plane).enumerate() {
            let values = &product[o * len..][..len];
            for r in 0..3 {
                for c in 0..3 {
                    let (rows, cols) = (order.rows[r].clone(), order.cols[c].clone());
                    let mut at = order.start[r][c] + b;
                    for oy in rows {
                        for ox in cols.clone() {
                            dst[oy * order.width + ox].write(values[at]);
                            at += batch;
                        }
                    }
                }
            }
        }
        // SAFETY: every class's pixels were written above, and the classes cover the plane.
        let image = unsafe { assume_written(image) };
        if let Some(epilogue) = epilogue {
            widest(
                #[inline(always)]
                || epilogue.apply(image, plane, b * out_channels, out_channels),
            );
        }
    });
}

/// The weight gradient (`[out_channels, in_channels, 3, 3]`).
pub(crate) fn weight_gradient(g: &ConvGeometry, x: &[f32], out_grad: &[f32]) -> Vec<f32> {
    let (cin, cout, plane, batch) = (g.in_channels, g.out_channels, g.out_plane(), g.batch);
    let order = Order::new(g);
    let len = order.len;
    let runs: Vec<Vec<Range<usize>>> = (0..9).map(|t| order.runs(t)).collect();
    // Each tap's product over all the outputs it reaches in one block of `k`: run by run, the
    // short runs (16–96 outputs at 4×4) each added the tap's whole block of sums back in,
    // more traffic than products.
    let (xs, starts) = shifted_compact(&order, &pixel_major(x, batch, cin, plane), cin, &runs);
    let dy = shifted(&order, &pixel_major(out_grad, batch, cout, plane), cout, CENTER..CENTER + 1);

    // In bfloat16, one block of filters per thread: each block packs every tap's shifted input
    // (the right operands, `cin × run` each) for itself, and with products at twice float32's
    // speed eight blocks of 64 filters spent more time packing than multiplying.
    let filter_block =
        if crate::bf16::enabled() { cout.div_ceil(rayon::current_num_threads().max(1)).max(1) } else { FILTER_BLOCK };
    let mut grad: Vec<f32> = Vec::with_capacity(g.weight_len());
    grad.spare_capacity_mut()[..g.weight_len()].par_chunks_mut(filter_block * cin * 9).enumerate().for_each(
        |(block, out)| {
            let filters = out.len() / (cin * 9);
            let first = block * filter_block;
            // `[filter][tap][input channel]`: each tap's product a strided block of rows.
            let mut taps = Scratch::stale(filters * 9 * cin);
            // The block's output gradient at the outputs a tap reaches, back to back.
            let mut dy_t = Scratch::stale(filters * len);
            for (t, runs) in runs.iter().enumerate() {
                let reach = reached(runs);
                let lhs = match runs.as_slice() {
                    [run] => View { data: &dy[first * len + run.start..], row: len, col: 1 },
                    _ => {
                        for (f, dst) in dy_t.chunks_exact_mut(reach).take(filters).enumerate() {
                            let mut at = 0;
                            for run in runs {
                                dst[at..at + run.len()]
                                    .copy_from_slice(&dy[(first + f) * len + run.start..][..run.len()]);
                                at += run.len();
                            }
                        }
                        View { data: &dy_t[..filters * reach], row: reach, col: 1 }
                    }
                };
                let rhs = View { data: &xs[starts[t]..starts[t + 1]], row: 1, col: reach };
                multiply(filters, cin, reach, &mut taps[t * cin..], 9 * cin, false, lhs, rhs, Parallelism::None);
            }
            for (f, dst) in out.chunks_exact_mut(cin * 9).enumerate() {
                let src = &taps[f * 9 * cin..][..9 * cin];
                for (c, filter) in dst.chunks_exact_mut(9).enumerate() {
                    for (t, v) in filter.iter_mut().enumerate() {
                        v.write(src[t * cin + c]);
                    }
                }
            }
        },
    );
    // SAFETY: each block wrote all of its filters' values.
    unsafe { grad.set_len(g.weight_len()) };
    grad
}
