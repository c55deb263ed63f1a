//! Depthwise convolution of small or strided planes, sixteen channels at a time with the channel
//! innermost.
//!
//! Why: the plane-at-a-time kernels of the parent module pay a fixed cost per plane (the phase
//! layout's rows, the wide plane, short rows copied out) that is several times the arithmetic
//! on MobileNetV2's and EfficientNet's late layers, whose planes are 7×7 and 4×4 at 112 px
//! (14×14 and 7×7 at 224) with hundreds of channels: a 4×4 plane is one vector. Here the planes
//! of sixteen consecutive channels of one image are transposed into a buffer of pixels of
//! sixteen lanes each, zero-padded, so that every tap of every pixel is one multiply-add of whole
//! vectors (each lane a channel, with its own weight) and the per-plane costs are shared by
//! sixteen planes. Four pixels at a time, so that four sums are in flight. Strided layers gain at
//! every size: the plane-at-a-time input gradient scatters its phases back one value at a time,
//! here each input pixel gathers its phase's taps.
//!
//! The sums run in the same order as the parent module's (taps in filter order, from zero), so
//! the forward and the input gradient give its values bit for bit; the weight gradient sums a
//! plane's products per channel in two f32 chains per tap (the parent: sixteen lanes along the
//! flattened plane), then across the batch in f64, as the parent does.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::conv::{ConvGeometry, Epilogue, Scratch};
use crate::simd::{assume_written, par_filled, widest, zeroed};

/// Channels per group: one AVX-512 vector of f32.
pub(super) const GROUP: usize = 16;

/// Outputs per parallel task (whole groups, at least one).
const TASK_OUTPUTS: usize = 1 << 13;

/// Images per parallel task of the weight gradient.
const IMAGES_PER_TASK: usize = 4;

/// Widest output plane a stride-1 convolution takes this path for (any width when strided).
/// Measured on MobileNetV2's and EfficientNet-Lite0's layers at 112 and 224 px
/// (docs/PERFORMANCE.md, Change 18): on 7×7 and 4×4 planes this path takes a half to a fifth of
/// the plane-at-a-time kernels' time, on 14×14 they are even, from 28×28 the plane-at-a-time
/// kernels win (their rows are whole vectors); strided, this path wins at every size (the
/// plane-at-a-time input gradient scatters its phases back one value at a time).
const MAX_STRIDE_1_WIDTH: usize = 8;

/// Whether `g` takes this path: whole groups of channels; small planes or a stride. Not with
/// `DEEPTUNE_CONV=direct` (to compare).
pub(super) fn suits(g: &ConvGeometry) -> bool {
    let strided = g.stride[0] > 1 || g.stride[1] > 1;
    g.in_channels.is_multiple_of(GROUP)
        && g.in_channels > 0
        && g.out_plane() > 0
        && (strided || g.out_w <= MAX_STRIDE_1_WIDTH)
        && crate::winograd::enabled()
}

/// A group's planes, zero-padded, pixel by pixel with the group's channels innermost:
/// `[rows][cols][GROUP]`, the planes' first pixel at row `top`, column `left`. What lies outside
/// the planes is never written, so one buffer of zeros serves every group of the geometry.
struct Padded {
    rows: usize,
    cols: usize,
    top: usize,
    left: usize,
    /// The planes' height and width.
    height: usize,
    width: usize,
}

impl Padded {
    fn zeros(&self) -> Scratch {
        let mut buf = Scratch::stale(self.rows * self.cols * GROUP);
        buf.fill(0.0);
        buf
    }

    /// Writes the group's planes (`GROUP` consecutive planes of `height·width` values) into the
    /// buffer's interior; narrow planes through `flat` (`height·width·GROUP` values, contents
    /// irrelevant) and then row by row, wide ones a row at a time.
    #[inline(always)]
    fn fill(&self, planes: &[f32], flat: &mut [f32], buf: &mut [f32]) {
        let plane = self.height * self.width;
        let start = |y: usize| ((self.top + y) * self.cols + self.left) * GROUP;
        if self.width < GROUP / 2 {
            // A transposition takes 16 pixels: rows of 4 or 7 would leave most of it empty.
            interleave(flat, planes, plane, plane);
            for (y, row) in flat.chunks_exact(self.width * GROUP).enumerate() {
                buf[start(y)..start(y) + row.len()].copy_from_slice(row);
            }
        } else {
            for y in 0..self.height {
                interleave(&mut buf[start(y)..], &planes[y * self.width..], plane, self.width);
            }
        }
    }
}

/// Where each pixel of a group's result reads: pixels grouped by the taps that reach them.
struct Gather {
    phases: Vec<Phase>,
}

struct Phase {
    /// The taps (indices in filter order, ascending) and where each reads from a pixel's corner.
    taps: Vec<usize>,
    offsets: Vec<usize>,
    /// Per pixel: its corner in the padded buffer, and its index in the result.
    pixels: Vec<[usize; 2]>,
}

impl Gather {
    /// `out[pixel·GROUP..][..GROUP] = Σₜ filters[t] ⊙ buf[corner + offset(t)]` for every pixel of
    /// every phase, from zero in tap order, four pixels at a time. `filters`: every tap's
    /// `GROUP` weights, interleaved; `phase_filters`: a buffer of as many.
    #[inline(always)]
    fn run(&self, buf: &[f32], filters: &[f32], phase_filters: &mut [f32], out: &mut [f32]) {
        for phase in &self.phases {
            for (k, &t) in phase.taps.iter().enumerate() {
                phase_filters[k * GROUP..(k + 1) * GROUP].copy_from_slice(&filters[t * GROUP..(t + 1) * GROUP]);
            }
            let taps = &phase_filters[..phase.taps.len() * GROUP];
            let mut blocks = phase.pixels.chunks_exact(4);
            for block in &mut blocks {
                filter_pixels::<{ 4 * GROUP }>(buf, block, &phase.offsets, taps, out);
            }
            for pixel in blocks.remainder() {
                filter_pixels::<GROUP>(buf, std::slice::from_ref(pixel), &phase.offsets, taps, out);
            }
        }
    }
}

/// [`Gather::run`] for the `LEN / GROUP` pixels of `pixels`, their sums in registers.
#[inline(always)]
fn filter_pixels<const LEN: usize>(
    buf: &[f32],
    pixels: &[[usize; 2]],
    offsets: &[usize],
    taps: &[f32],
    out: &mut [f32],
) {
    let mut acc = [0.0f32; LEN];
    for (&offset, tap) in offsets.iter().zip(taps.chunks_exact(GROUP)) {
        let tap: &[f32; GROUP] = tap.try_into().unwrap();
        for k in 0..LEN / GROUP {
            let at = pixels[k][0] + offset;
            let values: &[f32; GROUP] = buf[at..at + GROUP].try_into().unwrap();
            for j in 0..GROUP {
                acc[k * GROUP + j] = tap[j].mul_add(values[j], acc[k * GROUP + j]);
            }
        }
    }
    for k in 0..LEN / GROUP {
        let at = pixels[k][1] * GROUP;
        out[at..at + GROUP].copy_from_slice(&acc[k * GROUP..(k + 1) * GROUP]);
    }
}

/// The forward's (and the weight gradient's) buffer: the input, with the convolution's padding
/// before and as much after as the taps reach.
fn padded_input(g: &ConvGeometry) -> Padded {
    let extent = |axis: usize, input: usize, output: usize| {
        (g.padding[axis] + input).max((output - 1) * g.stride[axis] + (g.kernel[axis] - 1) * g.dilation[axis] + 1)
    };
    Padded {
        rows: extent(0, g.in_h, g.out_h),
        cols: extent(1, g.in_w, g.out_w),
        top: g.padding[0],
        left: g.padding[1],
        height: g.in_h,
        width: g.in_w,
    }
}

/// The forward's gather: every output pixel through every tap.
fn forward_gather(g: &ConvGeometry, layout: &Padded) -> Gather {
    let mut offsets = Vec::with_capacity(g.taps());
    for ky in 0..g.kernel[0] {
        for kx in 0..g.kernel[1] {
            offsets.push((ky * g.dilation[0] * layout.cols + kx * g.dilation[1]) * GROUP);
        }
    }
    let mut pixels = Vec::with_capacity(g.out_plane());
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            pixels.push([(oy * g.stride[0] * layout.cols + ox * g.stride[1]) * GROUP, oy * g.out_w + ox]);
        }
    }
    Gather { phases: vec![Phase { taps: (0..g.taps()).collect(), offsets, pixels }] }
}

/// The input gradient's buffer and gather. Input pixel (`iy`, `ix`) receives from output pixel
/// `((iy + pad − ky·d) / s, …)` through tap (`ky`, `kx`) where the division is exact: the taps
/// of the pixel's phase `((iy + pad) mod s, …)`. With `⌊(k − 1)·d / s⌋` rows and columns of
/// zeros before the output gradient's planes (and as many after as the input needs), every
/// tap of every input pixel reads inside the buffer, zeros where it has no output pixel.
fn input_grad_gather(g: &ConvGeometry) -> (Padded, Gather) {
    let ([sh, sw], [dh, dw], [pad_h, pad_w]) = (g.stride, g.dilation, g.padding);
    let (top, left) = ((g.kernel[0] - 1) * dh / sh, (g.kernel[1] - 1) * dw / sw);
    let layout = Padded {
        rows: (g.out_h + top).max((g.in_h + pad_h).saturating_sub(1) / sh + top + 1),
        cols: (g.out_w + left).max((g.in_w + pad_w).saturating_sub(1) / sw + left + 1),
        top,
        left,
        height: g.out_h,
        width: g.out_w,
    };
    let mut phases: Vec<Phase> =
        (0..sh * sw).map(|_| Phase { taps: Vec::new(), offsets: Vec::new(), pixels: Vec::new() }).collect();
    for ky in 0..g.kernel[0] {
        for kx in 0..g.kernel[1] {
            let (ry, rx) = (ky * dh, kx * dw);
            let phase = &mut phases[(ry % sh) * sw + rx % sw];
            phase.taps.push(ky * g.kernel[1] + kx);
            phase.offsets.push(((top - ry / sh) * layout.cols + left - rx / sw) * GROUP);
        }
    }
    for iy in 0..g.in_h {
        let (qy, ry) = ((iy + pad_h) / sh, (iy + pad_h) % sh);
        for ix in 0..g.in_w {
            let (qx, rx) = ((ix + pad_w) / sw, (ix + pad_w) % sw);
            phases[ry * sw + rx].pixels.push([(qy * layout.cols + qx) * GROUP, iy * g.in_w + ix]);
        }
    }
    // A phase no tap reads gives its pixels zeros: kept, with no taps.
    (layout, Gather { phases })
}

/// `dst[x·GROUP + c] = src[c·stride + x]` for `x < count`: `count` pixels of `GROUP` planes
/// `stride` apart, interleaved (`dst` holds at least `count·GROUP` values).
#[inline(always)]
fn interleave(dst: &mut [f32], src: &[f32], stride: usize, count: usize) {
    assert!(dst.len() >= count * GROUP && (count == 0 || src.len() >= (GROUP - 1) * stride + count));
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the bounds were checked above.
        unsafe { x86::interleave(dst.as_mut_ptr(), src.as_ptr(), stride, count) };
        return;
    }
    interleave_scalar(dst, src, stride, count);
}

/// [`interleave`] one value at a time (CPUs without AVX-512).
#[inline(always)]
fn interleave_scalar(dst: &mut [f32], src: &[f32], stride: usize, count: usize) {
    for (x, pixel) in dst[..count * GROUP].chunks_exact_mut(GROUP).enumerate() {
        for (c, value) in pixel.iter_mut().enumerate() {
            *value = src[c * stride + x];
        }
    }
}

/// The inverse of [`interleave`]: `dst[c·stride + x] = src[x·GROUP + c]` for `x < count`.
#[inline(always)]
fn deinterleave(dst: &mut [MaybeUninit<f32>], stride: usize, src: &[f32], count: usize) {
    assert!(src.len() >= count * GROUP && (count == 0 || dst.len() >= (GROUP - 1) * stride + count));
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the bounds were checked above; `MaybeUninit<f32>` has
        // `f32`'s layout and is only written.
        unsafe { x86::deinterleave(dst.as_mut_ptr().cast(), stride, src.as_ptr(), count) };
        return;
    }
    deinterleave_scalar(dst, stride, src, count);
}

/// [`deinterleave`] one value at a time (CPUs without AVX-512).
#[inline(always)]
fn deinterleave_scalar(dst: &mut [MaybeUninit<f32>], stride: usize, src: &[f32], count: usize) {
    for (x, pixel) in src[..count * GROUP].chunks_exact(GROUP).enumerate() {
        for (c, &value) in pixel.iter().enumerate() {
            dst[c * stride + x].write(value);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::simd::x86::first_lanes;

    /// [`super::interleave`] by blocks of 16 pixels transposed in registers (the last masked).
    ///
    /// # Safety
    /// AVX-512F; `dst` valid for `count·16` values, `src` for `15·stride + count`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn interleave(dst: *mut f32, src: *const f32, stride: usize, count: usize) {
        let mut x = 0;
        while x < count {
            let n = (count - x).min(16);
            let mut rows = [_mm512_setzero_ps(); 16];
            for (c, row) in rows.iter_mut().enumerate() {
                // SAFETY: plane `c`'s pixels `x..x + n` are in bounds.
                *row = unsafe { _mm512_maskz_loadu_ps(first_lanes(n), src.add(c * stride + x)) };
            }
            for (i, pixel) in transpose16(rows).iter().enumerate().take(n) {
                // SAFETY: pixel `x + i`'s 16 values are in bounds.
                unsafe { _mm512_storeu_ps(dst.add((x + i) * 16), *pixel) };
            }
            x += n;
        }
    }

    /// [`super::deinterleave`], as [`interleave`].
    ///
    /// # Safety
    /// AVX-512F; `src` valid for `count·16` values, `dst` for `15·stride + count`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn deinterleave(dst: *mut f32, stride: usize, src: *const f32, count: usize) {
        let mut x = 0;
        while x < count {
            let n = (count - x).min(16);
            let mut pixels = [_mm512_setzero_ps(); 16];
            for (i, pixel) in pixels.iter_mut().enumerate().take(n) {
                // SAFETY: pixel `x + i`'s 16 values are in bounds.
                *pixel = unsafe { _mm512_loadu_ps(src.add((x + i) * 16)) };
            }
            for (c, row) in transpose16(pixels).iter().enumerate() {
                // SAFETY: plane `c`'s pixels `x..x + n` are in bounds.
                unsafe { _mm512_mask_storeu_ps(dst.add(c * stride + x), first_lanes(n), *row) };
            }
            x += n;
        }
    }

    /// The 16 × 16 transpose of `r` (row `i` of the result holds element `i` of every input row).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // Casts are free; `array::map` with closures is not inlined into this function.
        let mut words = [_mm512_setzero_si512(); 16];
        for (w, v) in words.iter_mut().zip(r) {
            *w = _mm512_castps_si512(v);
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for (o, w) in out.iter_mut().zip(crate::simd::x86::transpose16(words)) {
            *o = _mm512_castsi512_ps(w);
        }
        out
    }
}

/// The group's filters interleaved: `taps[t·GROUP + c]` is tap `t` of channel `first + c`.
#[inline(always)]
fn interleave_filters(g: &ConvGeometry, weight: &[f32], first: usize, taps: &mut [f32]) {
    interleave(taps, &weight[first * g.taps()..], g.taps(), g.taps());
}

/// The parent's [`super::forward`] for geometries that [`suits`].
pub(super) fn forward(g: &ConvGeometry, input: &[f32], weight: &[f32], epilogue: Option<&Epilogue>) -> Vec<f32> {
    let (in_plane, out_plane) = (g.in_plane(), g.out_plane());
    let group_len = GROUP * out_plane;
    let layout = padded_input(g);
    let gather = forward_gather(g, &layout);
    let groups_per_task = (TASK_OUTPUTS / group_len).max(1);
    par_filled(g.batch * g.in_channels * out_plane, groups_per_task * group_len, |offset, out| {
        widest(
            #[inline(always)]
            || {
                let mut padded = layout.zeros();
                let mut flat = Scratch::stale(in_plane * GROUP);
                let (mut filters, mut phase_filters) =
                    (Scratch::stale(g.taps() * GROUP), Scratch::stale(g.taps() * GROUP));
                let mut pixels = Scratch::stale(group_len);
                for (i, out) in out.chunks_exact_mut(group_len).enumerate() {
                    let first_plane = offset / out_plane + i * GROUP;
                    let first_channel = first_plane % g.in_channels;
                    layout.fill(
                        &input[first_plane * in_plane..(first_plane + GROUP) * in_plane],
                        &mut flat,
                        &mut padded,
                    );
                    interleave_filters(g, weight, first_channel, &mut filters);
                    gather.run(&padded, &filters, &mut phase_filters, &mut pixels);
                    deinterleave(out, out_plane, &pixels, out_plane);
                    if let Some(epilogue) = epilogue {
                        assert!(epilogue.residual.is_none(), "the depthwise forward takes no residual");
                        // SAFETY: `deinterleave` wrote every value of the group's planes.
                        let values = unsafe { assume_written(out) };
                        for (c, plane) in values.chunks_exact_mut(out_plane).enumerate() {
                            epilogue.apply_channel(plane, first_channel + c, 0);
                        }
                    }
                }
            },
        )
    })
}

/// The parent's [`super::input_grad`] for geometries that [`suits`]. A group with a non-finite
/// weight goes plane by plane, row by row, so that the padding's zeros never meet it.
pub(super) fn input_grad(g: &ConvGeometry, weight: &[f32], out_grad: &[f32]) -> Vec<f32> {
    let (in_plane, out_plane) = (g.in_plane(), g.out_plane());
    let group_len = GROUP * in_plane;
    let (layout, gather) = input_grad_gather(g);
    let groups_per_task = (TASK_OUTPUTS / (GROUP * out_plane)).max(1);
    par_filled(g.batch * g.in_channels * in_plane, groups_per_task * group_len, |offset, out| {
        widest(
            #[inline(always)]
            || {
                let mut padded = layout.zeros();
                let mut flat = Scratch::stale(out_plane * GROUP);
                let (mut filters, mut phase_filters) =
                    (Scratch::stale(g.taps() * GROUP), Scratch::stale(g.taps() * GROUP));
                let mut pixels = Scratch::stale(group_len);
                for (i, gx) in out.chunks_exact_mut(group_len).enumerate() {
                    let first_plane = offset / in_plane + i * GROUP;
                    let first_channel = first_plane % g.in_channels;
                    let gy = &out_grad[first_plane * out_plane..(first_plane + GROUP) * out_plane];
                    let w = &weight[first_channel * g.taps()..(first_channel + GROUP) * g.taps()];
                    if !w.iter().all(|v| v.is_finite()) {
                        let gx = zeroed(gx);
                        for c in 0..GROUP {
                            let w = &w[c * g.taps()..(c + 1) * g.taps()];
                            let gx = &mut gx[c * in_plane..(c + 1) * in_plane];
                            super::input_grad_by_rows(g, w, &gy[c * out_plane..(c + 1) * out_plane], gx);
                        }
                        continue;
                    }
                    layout.fill(gy, &mut flat, &mut padded);
                    interleave_filters(g, weight, first_channel, &mut filters);
                    gather.run(&padded, &filters, &mut phase_filters, &mut pixels);
                    deinterleave(gx, in_plane, &pixels, in_plane);
                }
            },
        )
    })
}

/// The parent's [`super::weight_grad`] for geometries that [`suits`]: per group of channels, for
/// each image, every tap's products summed over the plane in f32 (four taps at a time, even and
/// odd pixels apart: eight sums in flight), then across the batch in f64 (a few images per
/// task, the tasks' sums in order).
pub(super) fn weight_grad(g: &ConvGeometry, input: &[f32], out_grad: &[f32]) -> Vec<f32> {
    let (in_plane, out_plane, taps) = (g.in_plane(), g.out_plane(), g.taps());
    let layout = padded_input(g);
    let gather = forward_gather(g, &layout);
    let phase = &gather.phases[0];
    // Tasks of a group and a few images each (not a group each: MobileNetV2's strided 96-channel
    // layer has six groups, fewer than many CPUs' threads); the images' sums are added in a fixed
    // order afterwards, so the result does not depend on the number of threads.
    let chunks = g.batch.div_ceil(IMAGES_PER_TASK);
    let groups = g.in_channels / GROUP;
    let partial: Vec<Vec<f64>> = (0..groups * chunks)
        .into_par_iter()
        .map(|task| {
            let (group, chunk) = (task / chunks, task % chunks);
            widest(
                #[inline(always)]
                || {
                    let mut sums = vec![0.0f64; taps * GROUP];
                    let mut padded = layout.zeros();
                    let mut flat = Scratch::stale(in_plane * GROUP);
                    let mut gy = Scratch::stale(out_plane * GROUP);
                    for n in chunk * IMAGES_PER_TASK..((chunk + 1) * IMAGES_PER_TASK).min(g.batch) {
                        let first_plane = n * g.in_channels + group * GROUP;
                        let planes = &input[first_plane * in_plane..(first_plane + GROUP) * in_plane];
                        layout.fill(planes, &mut flat, &mut padded);
                        interleave(&mut gy, &out_grad[first_plane * out_plane..], out_plane, out_plane);
                        let mut t = 0;
                        while t + 4 <= taps {
                            tap_sums::<{ 4 * GROUP }>(phase, &padded, &gy, t, &mut sums);
                            t += 4;
                        }
                        while t < taps {
                            tap_sums::<GROUP>(phase, &padded, &gy, t, &mut sums);
                            t += 1;
                        }
                    }
                    sums
                },
            )
        })
        .collect();
    let mut grad = vec![0.0f32; g.in_channels * taps];
    for (group, gw) in grad.chunks_exact_mut(GROUP * taps).enumerate() {
        let mut sums = vec![0.0f64; taps * GROUP];
        for part in &partial[group * chunks..(group + 1) * chunks] {
            sums.iter_mut().zip(part).for_each(|(sum, v)| *sum += v);
        }
        for (t, lanes) in sums.chunks_exact(GROUP).enumerate() {
            for (c, &sum) in lanes.iter().enumerate() {
                gw[c * taps + t] = sum as f32;
            }
        }
    }
    grad
}

/// Adds to `sums` (`[tap][GROUP]`) the plane's sums of `gy ⊙ input` for the `LEN / GROUP` taps
/// from `first`, accumulated in registers over the plane's pixels, even and odd ones apart.
#[inline(always)]
fn tap_sums<const LEN: usize>(phase: &Phase, padded: &[f32], gy: &[f32], first: usize, sums: &mut [f64]) {
    #[inline(always)]
    fn add<const LEN: usize>(
        acc: &mut [f32; LEN],
        pixel: [usize; 2],
        phase: &Phase,
        padded: &[f32],
        gy: &[f32],
        first: usize,
    ) {
        let [corner, pixel] = pixel;
        let grad: &[f32; GROUP] = gy[pixel * GROUP..(pixel + 1) * GROUP].try_into().unwrap();
        for k in 0..LEN / GROUP {
            let at = corner + phase.offsets[first + k];
            let values: &[f32; GROUP] = padded[at..at + GROUP].try_into().unwrap();
            for j in 0..GROUP {
                acc[k * GROUP + j] = grad[j].mul_add(values[j], acc[k * GROUP + j]);
            }
        }
    }
    let (mut even, mut odd) = ([0.0f32; LEN], [0.0f32; LEN]);
    let mut pairs = phase.pixels.chunks_exact(2);
    for pair in &mut pairs {
        add(&mut even, pair[0], phase, padded, gy, first);
        add(&mut odd, pair[1], phase, padded, gy, first);
    }
    if let [last] = pairs.remainder() {
        add(&mut even, *last, phase, padded, gy, first);
    }
    for (sum, (&even, &odd)) in sums[first * GROUP..first * GROUP + LEN].iter_mut().zip(even.iter().zip(&odd)) {
        *sum += (even + odd) as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transpositions in registers against the scalar ones (what CPUs without AVX-512 run),
    /// for whole and partial blocks of 16 pixels.
    #[test]
    fn transpositions_agree_with_the_scalar_ones() {
        for (count, stride) in [(1, 1), (4, 4), (7, 9), (16, 16), (17, 20), (49, 49), (200, 196)] {
            let src: Vec<f32> = (0..(GROUP - 1) * stride + count).map(|v| v as f32).collect();
            let (mut fast, mut scalar) = (vec![-1.0; count * GROUP], vec![-1.0; count * GROUP]);
            interleave(&mut fast, &src, stride, count);
            interleave_scalar(&mut scalar, &src, stride, count);
            assert_eq!(fast, scalar, "interleave {count} pixels {stride} apart");
            assert_eq!(scalar[(count - 1) * GROUP + 1], src[stride + count - 1], "the last pixel of plane 1");
            let (mut fast, mut scalar) =
                (vec![MaybeUninit::new(-1.0); src.len()], vec![MaybeUninit::new(-1.0); src.len()]);
            let pixels: Vec<f32> = (0..count * GROUP).map(|v| v as f32).collect();
            deinterleave(&mut fast, stride, &pixels, count);
            deinterleave_scalar(&mut scalar, stride, &pixels, count);
            // SAFETY: both were initialised in full above.
            let (fast, scalar) = unsafe { (assume_written(&mut fast).to_vec(), assume_written(&mut scalar).to_vec()) };
            assert_eq!(fast, scalar, "deinterleave {count} pixels {stride} apart");
            if stride > count {
                assert_eq!(scalar[count], -1.0, "values between planes stay as they were");
            }
        }
    }
}
