//! Depthwise 2-D convolution on plain `f32` slices (NCHW, contiguous): a convolution whose every
//! channel has its own filter (groups == channels in == channels out), as MobileNet and
//! EfficientNet use in every block. Forward, input gradient and weight gradient.
//!
//! Backward: burn computes these generically, the input gradient as a grouped transposed
//! convolution and the weight gradient as one small convolution per group, so a 960-channel
//! layer runs 960 separate convolutions. Here each is one pass over the data, parallel over
//! planes (input gradient) or channels (weight gradient), with the innermost loop along a row so
//! it vectorises.
//!
//! Forward: see [`forward`]; flex's kernel adds one tap at a time into the output plane, and
//! along rows, which in late layers are 7–14 values long (a 16-lane vector half empty).

// The geometry is a `ConvGeometry` with `in_channels` == `out_channels` (= the channels) and
// filters `[channels, 1, kh, kw]`.

mod interleaved;

use rayon::prelude::*;

use crate::conv::{ConvGeometry, Epilogue, PhaseLayout, Scratch};
use crate::simd::{lane_sum, par_filled, widest, zeroed};

/// Output values the forward accumulates in registers at a time: four AVX-512 vectors.
const BLOCK: usize = 64;
/// The forward's smaller block, for the rest of a plane.
const LANES: usize = 16;
/// Output values per parallel task of the forward (whole planes, at least one).
const TASK_OUTPUTS: usize = 1 << 13;

/// `out[i] = Σₜ taps[t] · src[i + offsets[t]]` for the whole of `out` (a multiple of [`LANES`]),
/// each block of outputs accumulated in registers over every tap and stored once.
#[inline(always)]
fn filter_flat(out: &mut [f32], src: &[f32], offsets: &[usize], taps: &[f32]) {
    #[inline(always)]
    fn block<const N: usize>(out: &mut [f32], start: usize, src: &[f32], offsets: &[usize], taps: &[f32]) {
        let mut acc = [0.0f32; N];
        for (&offset, &tap) in offsets.iter().zip(taps) {
            let run: &[f32; N] = src[start + offset..start + offset + N].try_into().unwrap();
            for j in 0..N {
                acc[j] = tap.mul_add(run[j], acc[j]);
            }
        }
        out[start..start + N].copy_from_slice(&acc);
    }
    let mut start = 0;
    while start + BLOCK <= out.len() {
        block::<BLOCK>(out, start, src, offsets, taps);
        start += BLOCK;
    }
    while start < out.len() {
        block::<LANES>(out, start, src, offsets, taps);
        start += LANES;
    }
}

/// The convolution of `input` `[batch, channels, in_h, in_w]` by `weight` `[channels, kh, kw]`,
/// `[batch, channels, out_h, out_w]`, with `epilogue` (per-channel scale, shift, clamp) applied
/// to each output plane while it is in cache. Small or strided planes of whole groups of 16
/// channels go sixteen channels at a time ([`interleaved`]), the rest plane by plane
/// ([`forward_by_planes`]); both give the same values, bit for bit.
pub fn forward(g: &ConvGeometry, input: &[f32], weight: &[f32], epilogue: Option<&Epilogue>) -> Vec<f32> {
    assert_eq!(g.in_channels, g.out_channels, "depthwise channels");
    assert_eq!(weight.len(), g.in_channels * g.taps(), "depthwise weight size");
    assert_eq!(input.len(), g.batch * g.in_channels * g.in_plane(), "depthwise input size");
    if g.batch * g.in_channels * g.out_plane() == 0 {
        return Vec::new();
    }
    if interleaved::suits(g) {
        return interleaved::forward(g, input, weight, epilogue);
    }
    forward_by_planes(g, input, weight, epilogue)
}

/// [`forward`] plane by plane (any geometry with outputs).
///
/// Per plane: the padded input is cut into phase planes ([`PhaseLayout`]; for stride 1 it is the
/// padded plane itself), then each block of 64 outputs of the flattened plane is accumulated in
/// registers over all taps — one pass over the output where flex's kernel makes one per tap —
/// and the valid columns are copied out. The padding is materialised zeros, so a non-finite
/// weight over padding gives NaN as in PyTorch.
fn forward_by_planes(g: &ConvGeometry, input: &[f32], weight: &[f32], epilogue: Option<&Epilogue>) -> Vec<f32> {
    let out_plane = g.out_plane();
    let len = g.batch * g.in_channels * out_plane;
    let layout = PhaseLayout::new(g);
    let planes_per_task = (TASK_OUTPUTS / out_plane).max(1);
    par_filled(len, planes_per_task * out_plane, |offset, out| {
        // Inlined into the dispatcher's `#[target_feature]` function, or `mul_add` is a libm call.
        widest(
            #[inline(always)]
            || {
                let mut phases = layout.zeros(g);
                let mut wide = Scratch::stale(layout.wide_len(g));
                for (i, out) in out.chunks_exact_mut(out_plane).enumerate() {
                    let plane = offset / out_plane + i;
                    let channel = plane % g.in_channels;
                    layout.fill(g, &input[plane * g.in_plane()..(plane + 1) * g.in_plane()], &mut phases);
                    let taps = &weight[channel * g.taps()..(channel + 1) * g.taps()];
                    filter_flat(&mut wide, &phases, &layout.offsets, taps);
                    // The epilogue over the whole wide plane (whole vectors, the discarded
                    // columns included) rather than row by row: rows of 7–28 values leave
                    // mostly scalar remainders, and SiLU's `exp` is costly there.
                    if let Some(epilogue) = epilogue {
                        assert!(epilogue.residual.is_none(), "the depthwise forward takes no residual");
                        epilogue.apply_channel(&mut wide, channel, 0);
                    }
                    for (oy, row) in out.chunks_exact_mut(g.out_w).enumerate() {
                        let values = &wide[oy * layout.cols..oy * layout.cols + g.out_w];
                        row.iter_mut().zip(values).for_each(|(o, &v)| {
                            o.write(v);
                        });
                    }
                }
            },
        )
    })
}

/// Most taps a filter may have for the phase-layout backward (7×7); larger filters go by rows.
const MAX_TAPS: usize = 49;

/// Gradient of the loss with respect to the input, `[batch, channels, in_h, in_w]`, from the
/// filters `[channels, kh, kw]` and the output gradient `[batch, channels, out_h, out_w]`.
///
/// Small or strided planes of whole groups of 16 channels go sixteen channels at a time
/// ([`interleaved`]), the rest plane by plane ([`input_grad_by_planes`]); both give the same
/// values, bit for bit.
pub fn input_grad(g: &ConvGeometry, weight: &[f32], out_grad: &[f32]) -> Vec<f32> {
    assert_eq!(weight.len(), g.in_channels * g.taps(), "depthwise weight size");
    assert_eq!(out_grad.len(), g.batch * g.in_channels * g.out_plane(), "depthwise output-gradient size");
    let len = g.batch * g.in_channels * g.in_plane();
    if len == 0 || g.out_plane() == 0 {
        return vec![0.0; len];
    }
    if interleaved::suits(g) {
        return interleaved::input_grad(g, weight, out_grad);
    }
    input_grad_by_planes(g, weight, out_grad)
}

/// [`input_grad`] plane by plane (any geometry with inputs and outputs).
///
/// The adjoint of [`forward`]'s flat filter: the output gradient is laid out "wide" (zeros in the
/// discarded columns), each phase plane's gradient is a flat filter of it with the offsets
/// negated (64 values accumulated in registers over the phase's taps), and the phases are
/// scattered back onto the input plane. A channel with a non-finite weight goes row by row, so
/// that the wide layout's zeros never meet it (`0 · ∞` would add a NaN PyTorch does not have).
fn input_grad_by_planes(g: &ConvGeometry, weight: &[f32], out_grad: &[f32]) -> Vec<f32> {
    let (in_plane, len) = (g.in_plane(), g.batch * g.in_channels * g.in_plane());
    let layout = PhaseLayout::new(g);
    let planes_per_task = (TASK_OUTPUTS / g.out_plane()).max(1);
    // Each plane zeroed by the task that computes it, right before (in cache, on every thread),
    // and the wide buffer's zeros written once per task: only `gy`'s values change per plane.
    par_filled(len, planes_per_task * in_plane, |offset, out| {
        widest(
            #[inline(always)]
            || {
                let mut wide = layout.wide_zeros(g);
                let mut phase_grad = Scratch::stale((layout.rows * layout.cols).next_multiple_of(LANES));
                for (i, gx) in out.chunks_exact_mut(in_plane).enumerate() {
                    let gx = zeroed(gx);
                    let plane = offset / in_plane + i;
                    let channel = plane % g.in_channels;
                    let gy = &out_grad[plane * g.out_plane()..(plane + 1) * g.out_plane()];
                    let w = &weight[channel * g.taps()..(channel + 1) * g.taps()];
                    if g.taps() <= MAX_TAPS && w.iter().all(|v| v.is_finite()) {
                        layout.input_grad_plane(g, w, gy, gx, &mut wide, &mut phase_grad);
                    } else {
                        input_grad_by_rows(g, w, gy, gx);
                    }
                }
            },
        )
    })
}

/// [`input_grad`] of one plane, one tap and output row at a time (`gx` zero on entry).
#[inline(always)]
fn input_grad_by_rows(g: &ConvGeometry, w: &[f32], gy: &[f32], gx: &mut [f32]) {
    for i in 0..g.kernel[0] {
        let rows = g.valid(0, i, g.out_h, g.in_h);
        for j in 0..g.kernel[1] {
            let tap = w[i * g.kernel[1] + j];
            let cols = g.valid(1, j, g.out_w, g.in_w);
            if cols.is_empty() {
                continue;
            }
            let first_col = g.input_index(1, j, cols.start);
            for oh in rows.clone() {
                let ih = g.input_index(0, i, oh);
                let gy_row = &gy[oh * g.out_w + cols.start..oh * g.out_w + cols.end];
                let gx_row = &mut gx[ih * g.in_w..(ih + 1) * g.in_w];
                if g.stride[1] == 1 {
                    let gx_run = &mut gx_row[first_col..first_col + gy_row.len()];
                    for (x, &y) in gx_run.iter_mut().zip(gy_row) {
                        *x += tap * y;
                    }
                } else {
                    for (k, &y) in gy_row.iter().enumerate() {
                        gx_row[first_col + k * g.stride[1]] += tap * y;
                    }
                }
            }
        }
    }
}

impl PhaseLayout {
    /// Where the wide plane starts in the input gradient's wide buffer: after the largest tap
    /// offset within a phase, so that phase value `j` reads wide value `j − offset` at
    /// `front + j − offset` ≥ 0.
    fn wide_front(&self, g: &ConvGeometry) -> usize {
        (0..g.taps()).map(|t| self.offsets[t] % self.phase_len).max().unwrap_or(0)
    }

    /// A buffer for the wide plane (after [`PhaseLayout::wide_front`] zeros, whole vectors and
    /// a vector of zeros to spare), all zeros: [`PhaseLayout::write_wide`] writes only the
    /// output's values, so the zeros in front, in the discarded columns and behind stay.
    fn wide_zeros(&self, g: &ConvGeometry) -> Scratch {
        let len = self.wide_front(g) + (self.rows * self.cols).next_multiple_of(LANES) + LANES;
        let mut buf = Scratch::stale(len.max(g.out_h * self.cols + LANES));
        buf.fill(0.0);
        buf
    }

    /// `gy` (`out_h × out_w`) as the wide plane (`out_h × cols`, the discarded columns left as
    /// they are: zeros in a buffer from [`PhaseLayout::wide_zeros`]) after `front` values.
    #[inline(always)]
    fn write_wide(&self, g: &ConvGeometry, gy: &[f32], front: usize, buf: &mut [f32]) {
        let body = &mut buf[front..front + g.out_h * self.cols];
        for (row, values) in body.chunks_exact_mut(self.cols).zip(gy.chunks_exact(g.out_w)) {
            row[..g.out_w].copy_from_slice(values);
        }
    }

    /// [`input_grad`] of one plane by phases (`gx` zero on entry; `w` finite).
    #[inline(always)]
    /// `wide` from [`PhaseLayout::wide_zeros`], `phase_grad` of `rows·cols` rounded up to whole
    /// vectors (its contents do not matter).
    fn input_grad_plane(
        &self,
        g: &ConvGeometry,
        w: &[f32],
        gy: &[f32],
        gx: &mut [f32],
        wide: &mut [f32],
        phase_grad: &mut [f32],
    ) {
        let ([sh, sw], [pad_h, pad_w]) = (g.stride, g.padding);
        // Each tap's offset within its phase.
        let local = |t: usize| self.offsets[t] % self.phase_len;
        let front = self.wide_front(g);
        self.write_wide(g, gy, front, wide);
        let (mut offsets, mut taps) = ([0usize; MAX_TAPS], [0.0f32; MAX_TAPS]);
        for phase in 0..sh * sw {
            let mut count = 0;
            for t in (0..g.taps()).filter(|&t| self.offsets[t] / self.phase_len == phase) {
                (offsets[count], taps[count]) = (front - local(t), w[t]);
                count += 1;
            }
            if count == 0 {
                continue; // no tap reads this phase: its pixels' gradient is 0
            }
            filter_flat(phase_grad, wide, &offsets[..count], &taps[..count]);
            let (py, px) = (phase / sw, phase % sw);
            let first = pad_w.saturating_sub(px).div_ceil(sw).min(self.cols);
            let end = (g.in_w + pad_w).saturating_sub(px).div_ceil(sw).clamp(first, self.cols);
            let x0 = (px + sw * first).wrapping_sub(pad_w);
            for (r, values) in phase_grad[..self.rows * self.cols].chunks_exact(self.cols).enumerate() {
                let y = (py + sh * r).wrapping_sub(pad_h);
                if y >= g.in_h {
                    continue;
                }
                let gx_row = &mut gx[y * g.in_w..(y + 1) * g.in_w];
                if sw == 1 {
                    gx_row[x0..x0 + end - first].copy_from_slice(&values[first..end]);
                } else {
                    for (k, &v) in values[first..end].iter().enumerate() {
                        gx_row[x0 + k * sw] = v;
                    }
                }
            }
        }
    }

    /// Adds to `sums[t]` the products of the output gradient `gy` with what tap `t` read from
    /// the input plane whose phases are in `phases` (zeros of the wide layout times input
    /// values: callers keep non-finite inputs away).
    #[inline(always)]
    fn weight_grad_plane(&self, g: &ConvGeometry, phases: &[f32], gy: &[f32], wide: &mut [f32], sums: &mut [f64]) {
        self.write_wide(g, gy, 0, wide);
        let wide = &wide[..(g.out_h * self.cols).next_multiple_of(LANES)];
        // One long dot product per tap. (All taps per gradient vector at once, 9 accumulators,
        // was not vectorised by the compiler: scalar sums on the stack.)
        for (t, &offset) in self.offsets.iter().enumerate() {
            sums[t] += lane_sum(wide, &phases[offset..offset + wide.len()], |a, b| a * b);
        }
    }
}

/// Gradient of the loss with respect to the filters, `[channels, kh, kw]`, from the input
/// `[batch, channels, in_h, in_w]` and the output gradient. Small or strided planes of whole
/// groups of 16 channels go sixteen channels at a time ([`interleaved`]), the rest channel by
/// channel ([`weight_grad_by_planes`]); neither result depends on the number of threads.
pub fn weight_grad(g: &ConvGeometry, input: &[f32], out_grad: &[f32]) -> Vec<f32> {
    assert_eq!(input.len(), g.batch * g.in_channels * g.in_plane(), "depthwise input size");
    assert_eq!(out_grad.len(), g.batch * g.in_channels * g.out_plane(), "depthwise output-gradient size");
    if g.in_channels * g.taps() == 0 || g.out_plane() == 0 {
        return vec![0.0f32; g.in_channels * g.taps()];
    }
    if interleaved::suits(g) {
        return interleaved::weight_grad(g, input, out_grad);
    }
    weight_grad_by_planes(g, input, out_grad)
}

/// [`weight_grad`] channel by channel (any geometry with filters and outputs). Per channel: for each image, the
/// input plane in [`PhaseLayout`] and the output gradient in the wide layout, then one pass in
/// which the whole gradient plane is one dot product per tap; per plane sums in `f32` lanes,
/// across the batch in `f64`. The work is split by channel, so the result does not depend
/// on the number of threads. Planes with a non-finite input value go row by row.
fn weight_grad_by_planes(g: &ConvGeometry, input: &[f32], out_grad: &[f32]) -> Vec<f32> {
    let mut grad = vec![0.0f32; g.in_channels * g.taps()];
    let layout = PhaseLayout::new(g);
    grad.par_chunks_mut(g.taps()).enumerate().for_each(|(channel, gw)| {
        widest(
            #[inline(always)]
            || {
                let mut sums = vec![0.0f64; g.taps()];
                let mut phases = layout.zeros(g);
                let mut wide = layout.wide_zeros(g);
                for n in 0..g.batch {
                    let plane = n * g.in_channels + channel;
                    let x = &input[plane * g.in_plane()..(plane + 1) * g.in_plane()];
                    let gy = &out_grad[plane * g.out_plane()..(plane + 1) * g.out_plane()];
                    // `v · 0` is 0 for finite values, NaN otherwise (a short-circuiting
                    // `all(is_finite)` is a scalar loop).
                    if lane_sum(x, x, |v, _| v * 0.0) == 0.0 {
                        layout.fill(g, x, &mut phases);
                        layout.weight_grad_plane(g, &phases, gy, &mut wide, &mut sums);
                    } else {
                        weight_grad_by_rows(g, x, gy, &mut sums);
                    }
                }
                for (out, sum) in gw.iter_mut().zip(sums) {
                    *out = sum as f32;
                }
            },
        )
    });
    grad
}

/// [`weight_grad`]'s sums for one plane, one tap and output row at a time.
#[inline(always)]
fn weight_grad_by_rows(g: &ConvGeometry, x: &[f32], gy: &[f32], sums: &mut [f64]) {
    for i in 0..g.kernel[0] {
        let rows = g.valid(0, i, g.out_h, g.in_h);
        for j in 0..g.kernel[1] {
            let cols = g.valid(1, j, g.out_w, g.in_w);
            if cols.is_empty() {
                continue;
            }
            let first_col = g.input_index(1, j, cols.start);
            let mut acc = 0.0f64;
            for oh in rows.clone() {
                let ih = g.input_index(0, i, oh);
                let gy_row = &gy[oh * g.out_w + cols.start..oh * g.out_w + cols.end];
                let x_row = &x[ih * g.in_w..(ih + 1) * g.in_w];
                acc += if g.stride[1] == 1 {
                    lane_sum(&x_row[first_col..first_col + gy_row.len()], gy_row, |a, b| a * b)
                } else {
                    gy_row.iter().enumerate().map(|(k, &y)| y * x_row[first_col + k * g.stride[1]]).sum::<f32>() as f64
                };
            }
            sums[i * g.kernel[1] + j] += acc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::EpilogueActivation;

    /// The definition, one multiply-add at a time, in f64.
    fn naive(g: &ConvGeometry, x: &[f32], w: &[f32], gy: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let mut gx = vec![0.0f64; x.len()];
        let mut gw = vec![0.0f64; w.len()];
        for n in 0..g.batch {
            for c in 0..g.in_channels {
                for oh in 0..g.out_h {
                    for ow in 0..g.out_w {
                        let y = gy[((n * g.in_channels + c) * g.out_h + oh) * g.out_w + ow] as f64;
                        for i in 0..g.kernel[0] {
                            for j in 0..g.kernel[1] {
                                let ih = (oh * g.stride[0] + i * g.dilation[0]) as isize - g.padding[0] as isize;
                                let iw = (ow * g.stride[1] + j * g.dilation[1]) as isize - g.padding[1] as isize;
                                if ih < 0 || iw < 0 || ih >= g.in_h as isize || iw >= g.in_w as isize {
                                    continue;
                                }
                                let xi = ((n * g.in_channels + c) * g.in_h + ih as usize) * g.in_w + iw as usize;
                                let wi = (c * g.kernel[0] + i) * g.kernel[1] + j;
                                gx[xi] += y * w[wi] as f64;
                                gw[wi] += y * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
        (gx.into_iter().map(|v| v as f32).collect(), gw.into_iter().map(|v| v as f32).collect())
    }

    /// The forward by its definition, in f64.
    fn naive_forward(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
        let mut y = vec![0.0f32; g.batch * g.in_channels * g.out_plane()];
        for n in 0..g.batch {
            for c in 0..g.in_channels {
                for oh in 0..g.out_h {
                    for ow in 0..g.out_w {
                        let mut sum = 0.0f64;
                        for i in 0..g.kernel[0] {
                            for j in 0..g.kernel[1] {
                                let ih = (oh * g.stride[0] + i * g.dilation[0]) as isize - g.padding[0] as isize;
                                let iw = (ow * g.stride[1] + j * g.dilation[1]) as isize - g.padding[1] as isize;
                                if ih < 0 || iw < 0 || ih >= g.in_h as isize || iw >= g.in_w as isize {
                                    continue;
                                }
                                let xi = ((n * g.in_channels + c) * g.in_h + ih as usize) * g.in_w + iw as usize;
                                sum += x[xi] as f64 * w[(c * g.kernel[0] + i) * g.kernel[1] + j] as f64;
                            }
                        }
                        y[((n * g.in_channels + c) * g.out_h + oh) * g.out_w + ow] = sum as f32;
                    }
                }
            }
        }
        y
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn check_channels(
        channels: usize,
        kernel: usize,
        stride: usize,
        padding: [usize; 2],
        dilation: usize,
        size: [usize; 2],
        pad_end: [usize; 2],
    ) {
        let out =
            |len: usize, axis: usize| (len + padding[axis] + pad_end[axis] - dilation * (kernel - 1) - 1) / stride + 1;
        let g = ConvGeometry {
            batch: 2,
            in_channels: channels,
            out_channels: channels,
            in_h: size[0],
            in_w: size[1],
            out_h: out(size[0], 0),
            out_w: out(size[1], 1),
            kernel: [kernel, kernel],
            stride: [stride, stride],
            padding,
            dilation: [dilation, dilation],
        };
        let x = values(g.batch * g.in_channels * g.in_plane(), 1);
        let w = values(g.in_channels * g.taps(), 2);
        let gy = values(g.batch * g.in_channels * g.out_plane(), 3);
        let (gx_ref, gw_ref) = naive(&g, &x, &w, &gy);
        let y_ref = naive_forward(&g, &x, &w);
        let y = forward(&g, &x, &w, None);
        assert_eq!(y.len(), y_ref.len());
        for (a, b) in y.iter().zip(&y_ref) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "output {a} vs {b} for {g:?}");
        }
        let (scale, shift) = (values(g.in_channels, 4), values(g.in_channels, 5));
        let activations = [
            EpilogueActivation::Identity,
            EpilogueActivation::Relu { cap: 0.3 },
            EpilogueActivation::Relu { cap: f32::INFINITY },
            EpilogueActivation::Silu,
        ];
        for activation in activations {
            let epilogue = Epilogue { scale: &scale, shift: &shift, activation, residual: None };
            let y = forward(&g, &x, &w, Some(&epilogue));
            for (i, (a, b)) in y.iter().zip(&y_ref).enumerate() {
                let c = i / g.out_plane() % g.in_channels;
                let b = epilogue.activate(b * scale[c] + shift[c]);
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "output {a} vs {b} ({activation:?}) for {g:?}");
            }
        }
        let gx = input_grad(&g, &w, &gy);
        let gw = weight_grad(&g, &x, &gy);
        if interleaved::suits(&g) {
            // Same sums in the same order as plane by plane.
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let epilogue =
                Epilogue { scale: &scale, shift: &shift, activation: EpilogueActivation::Silu, residual: None };
            assert_eq!(
                bits(&forward(&g, &x, &w, Some(&epilogue))),
                bits(&forward_by_planes(&g, &x, &w, Some(&epilogue)))
            );
            assert_eq!(bits(&gx), bits(&input_grad_by_planes(&g, &w, &gy)), "input grad for {g:?}");
        }
        for (a, b) in gx.iter().zip(&gx_ref) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "input grad {a} vs {b} for {g:?}");
        }
        for (a, b) in gw.iter().zip(&gw_ref) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "weight grad {a} vs {b} for {g:?}");
        }
    }

    #[test]
    fn forward_and_gradients_match_the_definition() {
        check_channels(3, 3, 1, [1, 1], 1, [7, 6], [1, 1]); // MobileNetV2's stride-1 3×3
        check_channels(3, 3, 2, [1, 1], 1, [8, 9], [1, 1]); // its stride-2 3×3
        check_channels(3, 5, 1, [2, 2], 1, [6, 6], [2, 2]); // EfficientNet's 5×5
        check_channels(3, 5, 2, [1, 1], 1, [9, 8], [2, 2]); // TensorFlow "same": more padding at the end
        check_channels(3, 3, 1, [2, 2], 2, [7, 7], [2, 2]); // dilated
        check_channels(3, 3, 2, [0, 0], 1, [3, 4], [0, 0]); // one output row and column
        check_channels(3, 1, 1, [0, 0], 1, [3, 4], [0, 0]);
        check_channels(3, 3, 1, [1, 1], 1, [40, 37], [1, 1]); // planes of several 64-value blocks
        check_channels(3, 5, 2, [1, 2], 1, [23, 30], [2, 1]); // asymmetric, different per axis
        check_channels(3, 3, 3, [1, 1], 2, [17, 19], [0, 1]); // stride 3 with dilation 2: phases mixed
    }

    /// Small planes of whole groups of 16 channels take the interleaved kernels.
    #[test]
    fn interleaved_kernels_match_the_definition() {
        let probe = |side: usize| ConvGeometry {
            batch: 1,
            in_channels: 32,
            out_channels: 32,
            in_h: side,
            in_w: side,
            out_h: side,
            out_w: side,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
        };
        assert!(interleaved::suits(&probe(7)) && !interleaved::suits(&probe(28)), "the test must reach both paths");
        check_channels(32, 3, 1, [1, 1], 1, [7, 7], [1, 1]); // MobileNetV2's late stride-1 3×3
        check_channels(16, 3, 2, [1, 1], 1, [7, 7], [1, 1]); // its stride-2 3×3 onto 4×4
        check_channels(32, 3, 1, [1, 1], 1, [4, 4], [1, 1]); // one vector per plane
        check_channels(16, 3, 1, [1, 1], 1, [8, 8], [1, 1]); // the widest stride-1 plane it takes
        check_channels(16, 3, 2, [1, 1], 1, [29, 27], [1, 1]); // strided: planes over several blocks of 16 pixels
        check_channels(16, 5, 1, [2, 2], 1, [6, 6], [2, 2]); // EfficientNet's 5×5
        check_channels(16, 5, 2, [1, 1], 1, [9, 8], [2, 2]); // TensorFlow "same": more padding at the end
        check_channels(16, 3, 1, [2, 2], 2, [7, 7], [2, 2]); // dilated
        check_channels(16, 3, 3, [1, 1], 2, [11, 12], [0, 1]); // stride 3 with dilation 2
        check_channels(16, 3, 2, [0, 0], 1, [3, 4], [0, 0]); // one output row
        check_channels(16, 1, 1, [0, 0], 1, [3, 4], [0, 0]);
    }

    /// Non-finite weights or inputs take the row-by-row backward: the phase layout's zeros (the
    /// discarded columns) and the interleaved layout's padding must not turn an infinite gradient
    /// into NaN. The infinities sit where those zeros would meet them: the top-left tap, and the
    /// last column of a row.
    #[test]
    fn non_finite_values_keep_their_gradients() {
        non_finite_values_keep_their_gradients_with(2);
        non_finite_values_keep_their_gradients_with(16); // sixteen channels at a time
    }

    fn non_finite_values_keep_their_gradients_with(channels: usize) {
        let g = ConvGeometry {
            batch: 2,
            in_channels: channels,
            out_channels: channels,
            in_h: 5,
            in_w: 6,
            out_h: 5,
            out_w: 6,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
        };
        let mut x = values(g.batch * g.in_channels * g.in_plane(), 1);
        let mut w = values(g.in_channels * g.taps(), 2);
        let gy: Vec<f32> = values(g.batch * g.in_channels * g.out_plane(), 3).iter().map(|v| v.abs() + 0.1).collect();
        w[0] = f32::INFINITY; // channel 0's top-left tap
        x[11] = f32::INFINITY; // image 0, channel 0, row 1, last column
        let (gx_ref, gw_ref) = naive(&g, &x, &w, &gy);
        let same = |a: f32, b: f32| a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-4 * (1.0 + b.abs());
        for (a, b) in input_grad(&g, &w, &gy).iter().zip(&gx_ref) {
            assert!(same(*a, *b), "input grad {a} vs {b}");
        }
        for (a, b) in weight_grad(&g, &x, &gy).iter().zip(&gw_ref) {
            assert!(same(*a, *b), "weight grad {a} vs {b}");
        }
        assert!(gx_ref.contains(&f32::INFINITY), "the test must see infinities");
    }

    /// PyTorch multiplies the zero padding by the weights too: an infinite weight over padding
    /// gives NaN at the border, inside it the sum of finite products with one infinity.
    #[test]
    fn a_non_finite_weight_over_padding_gives_nan() {
        let g = ConvGeometry {
            batch: 1,
            in_channels: 1,
            out_channels: 1,
            in_h: 4,
            in_w: 4,
            out_h: 4,
            out_w: 4,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
        };
        let mut w = vec![0.5f32; 9];
        w[0] = f32::INFINITY; // top-left tap: over padding for the first row and column
        let y = forward(&g, &[1.0; 16], &w, None);
        assert!(y[0].is_nan() && y[1].is_nan() && y[4].is_nan(), "{y:?}");
        assert_eq!(y[5], f32::INFINITY, "{y:?}");
    }
}
