//! 2-D max pooling on plain `f32` slices (NCHW, contiguous), forward and backward.
//!
//! flex computes max pooling through its 3-D path with an index per output, one element at a time
//! (a NaN test and a branch per compare): ResNet's stem pooling was 15 % of its inference at 112
//! px. Here each output row is the running maximum of whole input-row segments, which vectorises;
//! the backward recomputes each window's first maximum from the saved input and output instead
//! of keeping an index tensor.
//!
//! As PyTorch: padding never wins (it is −∞), a NaN in a window makes the output NaN, and the
//! gradient goes to the first position (row-major within the window) holding the maximum.

use crate::conv::Scratch;
use crate::simd::{assume_written, par_filled, widest};

/// Input `[planes, in_h, in_w]` (`planes` = batch · channels), output `[planes, out_h, out_w]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    pub planes: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl PoolGeometry {
    fn in_plane(&self) -> usize {
        self.in_h * self.in_w
    }

    fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }
}

/// `a` unless `b` is larger or NaN (then `b`): the running maximum with PyTorch's NaN rule,
/// written as a select so it vectorises.
#[inline(always)]
fn max_nan(a: f32, b: f32) -> f32 {
    if b > a || b.is_nan() { b } else { a }
}

/// Output values per parallel task of the forward (whole planes, at least one).
const TASK_OUTPUTS: usize = 1 << 13;

/// Per output row: the running maximum of the window's input rows (contiguous, vectorised), that
/// row cut into `stride` column phases (phase `p` holds padded columns `p, p + stride, …`, −∞ in
/// the padding), then the maximum over the window's columns, each a contiguous run of a phase.
/// flex's kernel — and a first version of ours — read every tap with a stride-2 gather.
pub fn forward(g: &PoolGeometry, x: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), g.planes * g.in_plane(), "max-pool input size");
    let out_plane = g.out_plane();
    if g.planes * out_plane == 0 {
        return Vec::new();
    }
    let ([kh, kw], [sh, sw], [pad_h, pad_w]) = (g.kernel, g.stride, g.padding);
    // Columns of each phase: enough for the last output's last tap.
    let cols = g.out_w + (kw - 1) / sw;
    let planes_per_task = (TASK_OUTPUTS / out_plane).max(1);
    par_filled(g.planes * out_plane, planes_per_task * out_plane, |offset, out| {
        widest(
            #[inline(always)]
            || {
                let mut rows_max = Scratch::stale(g.in_w);
                let mut phases = Scratch::stale(sw * cols);
                let mut out_row = Scratch::stale(g.out_w);
                for (i, out) in out.chunks_exact_mut(out_plane).enumerate() {
                    let input = &x[(offset / out_plane + i) * g.in_plane()..][..g.in_plane()];
                    for (oy, dst) in out.chunks_exact_mut(g.out_w).enumerate() {
                        rows_max.fill(f32::NEG_INFINITY);
                        for ky in 0..kh {
                            let iy = (oy * sh + ky).wrapping_sub(pad_h);
                            if iy < g.in_h {
                                let src = &input[iy * g.in_w..][..g.in_w];
                                rows_max.iter_mut().zip(src).for_each(|(m, &v)| *m = max_nan(*m, v));
                            }
                        }
                        for (phase, run) in phases.chunks_exact_mut(cols).enumerate() {
                            let (first, end) = phase_columns(g, phase, cols);
                            run[..first].fill(f32::NEG_INFINITY);
                            run[end..].fill(f32::NEG_INFINITY);
                            let x0 = (phase + sw * first).wrapping_sub(pad_w);
                            every_nth(&rows_max, x0, sw, &mut run[first..end]);
                        }
                        out_row.copy_from_slice(&phases[..g.out_w]);
                        for kx in 1..kw {
                            let run = &phases[(kx % sw) * cols + kx / sw..][..g.out_w];
                            out_row.iter_mut().zip(run).for_each(|(m, &v)| *m = max_nan(*m, v));
                        }
                        dst.iter_mut().zip(out_row.iter()).for_each(|(d, &v)| {
                            d.write(v);
                        });
                    }
                }
            },
        )
    })
}

/// The input gradient: each output's gradient added to the first position of its window that
/// holds the output's value.
///
/// One plane per task, its gradient zeroed in cache rather than by a separate pass. With AVX-512
/// and column stride 1 or 2, the search runs 16 outputs at a time in registers (every tap a
/// compare, masked loads for the padding: `x86::backward_row`); ResNet-18's stem pooling in
/// training at 112 px went from 5.1 to 1.8 % of the step. Otherwise one output at a time,
/// stopping at the first match, the windows inside the input without bounds tests. (A first
/// vectorised search, left to the compiler, measured 1.8× slower than that: rows of 28 outputs
/// were all vector remainders.)
pub fn backward(g: &PoolGeometry, x: &[f32], output: &[f32], out_grad: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), g.planes * g.in_plane(), "max-pool input size");
    assert_eq!(
        (output.len(), out_grad.len()),
        (g.planes * g.out_plane(), g.planes * g.out_plane()),
        "max-pool output size"
    );
    let (in_plane, out_plane) = (g.in_plane(), g.out_plane());
    if g.planes * in_plane == 0 {
        return Vec::new();
    }
    let ([kh, kw], [sh, sw], [pad_h, pad_w]) = (g.kernel, g.stride, g.padding);
    // Outputs whose whole window lies inside the input: rows and columns `inner`.
    let inner = |pad: usize, stride: usize, size: usize, kernel: usize, out: usize| {
        let lo = pad.div_ceil(stride).min(out);
        lo..(size + pad + 1).saturating_sub(kernel).div_ceil(stride).clamp(lo, out)
    };
    let (rows, cols) = (inner(pad_h, sh, g.in_h, kh, g.out_h), inner(pad_w, sw, g.in_w, kw, g.out_w));
    par_filled(g.planes * in_plane, in_plane, |offset, dx| {
        let plane = offset / in_plane;
        let input = &x[plane * in_plane..][..in_plane];
        let out = &output[plane * out_plane..][..out_plane];
        let dy = &out_grad[plane * out_plane..][..out_plane];
        for v in dx.iter_mut() {
            v.write(0.0);
        }
        // SAFETY: every value was just written.
        let dx = unsafe { assume_written(dx) };
        #[cfg(target_arch = "x86_64")]
        if matches!(sw, 1 | 2) && std::is_x86_feature_detected!("avx512f") {
            for oy in 0..g.out_h {
                let row = oy * g.out_w..(oy + 1) * g.out_w;
                // SAFETY: the CPU has AVX-512F.
                unsafe { x86::backward_row(g, input, &out[row.clone()], &dy[row], oy, dx) };
            }
            return;
        }
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                let o = oy * g.out_w + ox;
                let (value, grad) = (out[o], dy[o]);
                let found = if rows.contains(&oy) && cols.contains(&ox) {
                    let corner = (oy * sh - pad_h) * g.in_w + ox * sw - pad_w;
                    let window = &input[corner..][..(kh - 1) * g.in_w + kw];
                    (0..kh)
                        .flat_map(|ky| (0..kw).map(move |kx| ky * g.in_w + kx))
                        .find(|&i| {
                            let v = window[i];
                            v == value || (value.is_nan() && v.is_nan())
                        })
                        .map(|i| corner + i)
                } else {
                    first_max(g, input, oy, ox, value)
                };
                if let Some(index) = found {
                    dx[index] += grad;
                }
            }
        }
    })
}

/// The first position (row-major in the window) of output `(oy, ox)`'s window holding `value`.
fn first_max(g: &PoolGeometry, input: &[f32], oy: usize, ox: usize, value: f32) -> Option<usize> {
    for ky in 0..g.kernel[0] {
        let Some(iy) = (oy * g.stride[0] + ky).checked_sub(g.padding[0]).filter(|&iy| iy < g.in_h) else {
            continue;
        };
        for kx in 0..g.kernel[1] {
            let Some(ix) = (ox * g.stride[1] + kx).checked_sub(g.padding[1]).filter(|&ix| ix < g.in_w) else {
                continue;
            };
            let v = input[iy * g.in_w + ix];
            if v == value || (value.is_nan() && v.is_nan()) {
                return Some(iy * g.in_w + ix);
            }
        }
    }
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::PoolGeometry;
    use crate::simd::x86::{even_odd, first_lanes, lanes_inside};

    /// The gradient of output row `oy` (`out`, `dy`: its values and gradients) added to `dx`
    /// (one plane), 16 outputs at a time: each tap in row-major order compared with the
    /// outputs along the row, the first match per output kept, then the adds one output at a
    /// time in output order (the scalar search's order, so bit for bit its sums). The scalar
    /// search stops at the first match, with a branch per tap that the data decides: 5 % of
    /// ResNet-18's bfloat16 training step at 112 px.
    ///
    /// # Safety
    /// AVX-512F; `g.stride[1]` is 1 or 2.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn backward_row(
        g: &PoolGeometry,
        input: &[f32],
        out: &[f32],
        dy: &[f32],
        oy: usize,
        dx: &mut [f32],
    ) {
        let ([kh, kw], [sh, sw], [pad_h, pad_w]) = (g.kernel, g.stride, g.padding);
        assert!(matches!(sw, 1 | 2), "column stride");
        assert!(input.len() >= g.in_h * g.in_w && dx.len() >= g.in_h * g.in_w, "input plane size");
        assert!(out.len() >= g.out_w && dy.len() >= g.out_w, "output row size");
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let mut found_at = [0i32; 16];
        for first in (0..g.out_w).step_by(16) {
            let count = (g.out_w - first).min(16);
            let outputs = first_lanes(count);
            // SAFETY: lanes masked to the row's outputs.
            let value = unsafe { _mm512_maskz_loadu_ps(outputs, out.as_ptr().add(first)) };
            let nan_outputs = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(value, value);
            // Input column of each output's window's first tap: sw·(first + lane) − pad_w.
            let columns = _mm512_sub_epi32(
                _mm512_mullo_epi32(
                    _mm512_add_epi32(lanes, _mm512_set1_epi32(first as i32)),
                    _mm512_set1_epi32(sw as i32),
                ),
                _mm512_set1_epi32(pad_w as i32),
            );
            let (mut found, mut index) = (0 as __mmask16, _mm512_setzero_si512());
            for ky in 0..kh {
                let Some(iy) = (oy * sh + ky).checked_sub(pad_h).filter(|&iy| iy < g.in_h) else {
                    continue;
                };
                let row = input[iy * g.in_w..][..g.in_w].as_ptr();
                for kx in 0..kw {
                    let start = (sw * first + kx) as isize - pad_w as isize;
                    let valid = outputs & lanes_inside(start, sw, g.in_w);
                    // SAFETY: only lanes inside the row are read.
                    let taps = unsafe {
                        if sw == 1 {
                            _mm512_maskz_loadu_ps(lanes_inside(start, 1, g.in_w), row.wrapping_offset(start))
                        } else {
                            even_odd(row, start, g.in_w).0
                        }
                    };
                    let mut matches = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(taps, value);
                    if nan_outputs != 0 {
                        matches |= nan_outputs & _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(taps, taps);
                    }
                    let first_matches = matches & valid & !found;
                    let at = _mm512_add_epi32(columns, _mm512_set1_epi32((iy * g.in_w + kx) as i32));
                    index = _mm512_mask_mov_epi32(index, first_matches, at);
                    found |= first_matches;
                }
            }
            // SAFETY: 16 values fit.
            unsafe { _mm512_storeu_si512(found_at.as_mut_ptr().cast(), index) };
            for (lane, &at) in found_at.iter().enumerate().take(count) {
                if found & (1 << lane) != 0 {
                    dx[at as usize] += dy[first + lane];
                }
            }
        }
    }
}

/// `out[k] = src[first + k·step]`. Stride 2 (every pooling layer of the models) as pairs, which
/// the compiler turns into vector shuffles; other strides one value at a time.
#[inline(always)]
fn every_nth(src: &[f32], first: usize, step: usize, out: &mut [f32]) {
    if step == 2 {
        let (pairs, last) = src[first..].as_chunks::<2>();
        let (paired, rest) = out.split_at_mut(out.len().min(pairs.len()));
        paired.iter_mut().zip(pairs).for_each(|(o, pair)| *o = pair[0]);
        if let ([o], [v]) = (rest, last) {
            *o = *v;
        }
    } else {
        out.iter_mut().enumerate().for_each(|(k, o)| *o = src[first + k * step]);
    }
}

/// The phase columns `first..end` of phase `phase` (padded columns `phase + sw·c`) that lie
/// inside the input row.
#[inline(always)]
fn phase_columns(g: &PoolGeometry, phase: usize, cols: usize) -> (usize, usize) {
    let (sw, pad_w) = (g.stride[1], g.padding[1]);
    let first = pad_w.saturating_sub(phase).div_ceil(sw).min(cols);
    let end = (g.in_w + pad_w).saturating_sub(phase).div_ceil(sw).clamp(first, cols);
    (first, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Max pooling by its definition: every window, padding excluded, NaN wins.
    fn reference(g: &PoolGeometry, x: &[f32]) -> (Vec<f32>, Vec<Option<usize>>) {
        let mut out = vec![f32::NEG_INFINITY; g.planes * g.out_plane()];
        let mut arg = vec![None; out.len()];
        for p in 0..g.planes {
            for oy in 0..g.out_h {
                for ox in 0..g.out_w {
                    let o = p * g.out_plane() + oy * g.out_w + ox;
                    for ky in 0..g.kernel[0] {
                        for kx in 0..g.kernel[1] {
                            let (iy, ix) = (
                                (oy * g.stride[0] + ky) as isize - g.padding[0] as isize,
                                (ox * g.stride[1] + kx) as isize - g.padding[1] as isize,
                            );
                            if iy < 0 || ix < 0 || iy >= g.in_h as isize || ix >= g.in_w as isize {
                                continue;
                            }
                            let i = iy as usize * g.in_w + ix as usize;
                            let v = x[p * g.in_plane() + i];
                            if arg[o].is_none() || v > out[o] || (v.is_nan() && !out[o].is_nan()) {
                                out[o] = v;
                                arg[o] = Some(i);
                            }
                        }
                    }
                }
            }
        }
        (out, arg)
    }

    #[test]
    fn forward_and_backward_are_the_definition() {
        for (kernel, stride, padding, size) in [
            (3, 2, 1, [9, 8]),
            (2, 2, 0, [6, 7]),
            (3, 1, 1, [5, 5]),
            (3, 2, 0, [7, 7]),
            (3, 3, 1, [10, 11]),
            (5, 2, 2, [12, 9]),
            // Rows of more than 16 outputs (two vectors of them), as ResNet's stem pooling.
            (3, 2, 1, [7, 70]),
            (3, 1, 1, [4, 37]),
        ] {
            let out = |len: usize| (len + 2 * padding - kernel) / stride + 1;
            let g = PoolGeometry {
                planes: 3,
                in_h: size[0],
                in_w: size[1],
                out_h: out(size[0]),
                out_w: out(size[1]),
                kernel: [kernel, kernel],
                stride: [stride, stride],
                padding: [padding, padding],
            };
            // Integers in a small range: ties, which the gradient must break as PyTorch does.
            let mut x: Vec<f32> = (0..g.planes * g.in_plane()).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
            x[5] = f32::NAN;
            let (expected, argmax) = reference(&g, &x);
            let ours = forward(&g, &x);
            for (a, b) in ours.iter().zip(&expected) {
                assert!(a == b || (a.is_nan() && b.is_nan()), "{g:?}: {a} vs {b}");
            }
            let dy: Vec<f32> = (0..ours.len()).map(|i| i as f32 + 1.0).collect();
            let dx = backward(&g, &x, &ours, &dy);
            let mut expected_dx = vec![0.0f32; x.len()];
            for (o, arg) in argmax.iter().enumerate() {
                expected_dx[(o / g.out_plane()) * g.in_plane() + arg.unwrap()] += dy[o];
            }
            assert_eq!(dx, expected_dx, "{g:?}");
        }
    }
}
