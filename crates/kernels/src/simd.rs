//! Vectorisation and output-buffer helpers for the kernels' loops.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// A vector of `len` values computed in parallel, `chunk` at a time: `fill(offset, out)` writes
/// every element of `out`, the values at `offset..offset + out.len()`.
///
/// Why not `vec![0.0; len]` and overwrite: zeroing is a full extra pass over every activation a
/// kernel produces (a `memset` of megabytes per layer and step).
pub(crate) fn par_filled(len: usize, chunk: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    let chunk = chunk.max(1);
    let mut values = Vec::with_capacity(len);
    values.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(index, out)| fill(index * chunk, out));
    // SAFETY: the first `len` elements were all initialised: `fill` writes every element of each
    // chunk it is given (its contract, kept by every caller in this crate: each iterates over the
    // whole `out`), and the chunks cover `0..len`. Were `fill` to panic, the panic propagates
    // before this line and `values` is dropped with length 0.
    unsafe { values.set_len(len) };
    values
}

/// Runs `f` compiled for the widest vector instructions this CPU has (AVX-512, else AVX2+FMA on
/// x86-64), chosen at run time. The crate itself is compiled for baseline x86-64 (SSE2, four
/// floats per instruction); `f` is inlined into one of pulp's `#[target_feature]` functions, so
/// the compiler vectorises its loops for that CPU instead. Call it inside each parallel task,
/// around the loops, not around the `rayon` call (the tasks are separate functions).
///
/// Mark the closure `#[inline(always)]` (and any closure it calls that holds a loop): otherwise
/// the compiler may keep it a separate function, compiled for baseline SSE2 — profiles showed
/// batch norm's sums, im2col and the depthwise forward that way (`f32::mul_add` a libm call).
#[inline(always)]
pub(crate) fn widest<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// `Σ f(a[i], b[i])`, summed in 16 independent f32 lanes (so it vectorises: a single f32
/// accumulator is a strict sequential chain the compiler may not reorder), then in f64.
#[inline(always)]
pub(crate) fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    const LANES: usize = 16;
    let mut lanes = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(&a, &b)| f(a, b) as f64).sum();
    for (a, b) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            lanes[lane] += f(a[lane], b[lane]);
        }
    }
    lanes.iter().map(|&v| v as f64).sum::<f64>() + tail
}

/// Two sums `Σ f(a[i], b[i])` (`f` gives a pair) over several pairs of equally long slices (e.g.
/// a channel's planes across the batch): each pair of slices summed in 16 f32 lanes as
/// [`lane_sum`] does, the lanes carried across slices in f64 and reduced once at the end. For
/// small planes (a 7×7 plane is three vectors) a reduction per slice would cost as much as the
/// sums. (Separate one-dimensional lane arrays: a `[[f32; 16]; N]` was not vectorised.)
#[inline(always)]
pub(crate) fn lane_sums2<'a>(
    pairs: impl Iterator<Item = (&'a [f32], &'a [f32])>,
    f: impl Fn(f32, f32) -> (f32, f32),
) -> (f64, f64) {
    const LANES: usize = 16;
    let (mut wide_p, mut wide_q) = ([0.0f64; LANES], [0.0f64; LANES]);
    let (mut tail_p, mut tail_q) = (0.0f64, 0.0f64);
    for (a, b) in pairs {
        let (mut lanes_p, mut lanes_q) = ([0.0f32; LANES], [0.0f32; LANES]);
        let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        for (&x, &y) in a_chunks.remainder().iter().zip(b_chunks.remainder()) {
            let (p, q) = f(x, y);
            tail_p += p as f64;
            tail_q += q as f64;
        }
        for (x, y) in a_chunks.zip(b_chunks) {
            for lane in 0..LANES {
                let (p, q) = f(x[lane], y[lane]);
                lanes_p[lane] += p;
                lanes_q[lane] += q;
            }
        }
        for lane in 0..LANES {
            wide_p[lane] += lanes_p[lane] as f64;
            wide_q[lane] += lanes_q[lane] as f64;
        }
    }
    (wide_p.iter().sum::<f64>() + tail_p, wide_q.iter().sum::<f64>() + tail_q)
}

/// `eˣ` in f32 without a libm call, so loops around it vectorise (`f32::exp` is a scalar call per
/// element: SiLU was one). Cephes' `expf`: `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, a degree-6
/// polynomial for `eʳ`, `2ⁿ` from the exponent bits; within 2 ulp of `f32::exp` where the
/// result is a normal float (tested). Below about −87.3 it returns 0, above 88.37 it saturates
/// at e^88.37 ≈ 2.4·10³⁸; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LIMIT: f32 = 88.376_26;
    // Selects, not clamp(): a NaN passes through both comparisons.
    let x = if x < -LIMIT { -LIMIT } else { x };
    let x = if x > LIMIT { LIMIT } else { x };
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // ln 2 in two parts, so n·ln 2 is subtracted without rounding error.
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2ⁿ for n in [−127, 128): n = −127 gives 0 (the result would be subnormal).
    let biased = (n as i32 + 127).clamp(0, 255) as u32;
    y * f32::from_bits(biased << 23)
}

/// `out` filled with zeros, as initialised values.
pub(crate) fn zeroed(out: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    out.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just written.
    unsafe { assume_written(out) }
}

/// `out` as initialised values.
///
/// # Safety
/// Every element of `out` must have been written.
pub(crate) unsafe fn assume_written(out: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and the caller guarantees every element is
    // initialised.
    unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// AVX-512 helpers shared by the kernels that shuffle in registers.
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// The first `n` of 16 lanes (all of them for `n ≥ 16`).
    #[inline(always)]
    pub(crate) fn first_lanes(n: usize) -> __mmask16 {
        if n >= 16 { 0xFFFF } else { (1u16 << n) - 1 }
    }

    /// Lanes `k < 16` with `0 ≤ start + step·k < len`: those of every `step`-th value from
    /// `start` that lie inside a row of `len` values (`start` may lie before the row).
    #[inline(always)]
    pub(crate) fn lanes_inside(start: isize, step: usize, len: usize) -> __mmask16 {
        let step = step as isize;
        let low = if start >= 0 { 0 } else { (-start + step - 1) / step };
        let high = ((len as isize - start).max(0) + step - 1) / step;
        let (low, high) = (low.clamp(0, 16) as u32, high.clamp(0, 16) as u32);
        if high <= low { 0 } else { (((1u32 << high) - 1) & !((1u32 << low) - 1)) as __mmask16 }
    }

    /// The even and odd values of a row's 32 values from `start`, zeros for those outside the
    /// row's `len` values (`start` may lie before the row: a padded row without the copy).
    ///
    /// # Safety
    /// `row` valid for reads of `len` values.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn even_odd(row: *const f32, start: isize, len: usize) -> (__m512, __m512) {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        // SAFETY: masked-out lanes are not read; the others lie in `row[..len]`.
        let (low, high) = unsafe {
            (
                _mm512_maskz_loadu_ps(lanes_inside(start, 1, len), row.wrapping_offset(start)),
                _mm512_maskz_loadu_ps(lanes_inside(start + 16, 1, len), row.wrapping_offset(start + 16)),
            )
        };
        (_mm512_permutex2var_ps(low, even, high), _mm512_permutex2var_ps(low, odd, high))
    }

    /// A 16 × 16 matrix of 32-bit words transposed: unpacks of words, then of word pairs, pair
    /// 4 × 4 blocks within each 128-bit lane; two rounds of lane shuffles place the blocks.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
        let mut a = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        // b[4i + e], lane L: column 4L + e of rows 4i..4i + 4.
        let mut b = [_mm512_setzero_si512(); 16];
        for i in 0..4 {
            b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
            b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
            b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
            b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
        }
        let mut c = [_mm512_setzero_si512(); 16];
        for e in 0..4 {
            let s0 = _mm512_shuffle_i32x4::<0x88>(b[e], b[4 + e]);
            let s1 = _mm512_shuffle_i32x4::<0xDD>(b[e], b[4 + e]);
            let s2 = _mm512_shuffle_i32x4::<0x88>(b[8 + e], b[12 + e]);
            let s3 = _mm512_shuffle_i32x4::<0xDD>(b[8 + e], b[12 + e]);
            c[e] = _mm512_shuffle_i32x4::<0x88>(s0, s2);
            c[8 + e] = _mm512_shuffle_i32x4::<0xDD>(s0, s2);
            c[4 + e] = _mm512_shuffle_i32x4::<0x88>(s1, s3);
            c[12 + e] = _mm512_shuffle_i32x4::<0xDD>(s1, s3);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn lanes_inside_a_row() {
        use super::x86::{first_lanes, lanes_inside};
        assert_eq!((first_lanes(0), first_lanes(3), first_lanes(16), first_lanes(20)), (0, 0b111, 0xffff, 0xffff));
        assert_eq!(lanes_inside(0, 1, 28), 0xffff);
        assert_eq!(lanes_inside(-1, 1, 28), 0xfffe);
        assert_eq!(lanes_inside(16, 1, 28), 0x0fff);
        assert_eq!(lanes_inside(-3, 1, 2), 0b11000);
        assert_eq!(lanes_inside(30, 1, 28), 0);
        assert_eq!(lanes_inside(-20, 1, 28), 0);
        // Every second value: columns −1, 1, 3, … of a row of 28 (lanes 1–14) or 10 (lanes 1–5).
        assert_eq!(lanes_inside(-1, 2, 28), 0x7ffe);
        assert_eq!(lanes_inside(-1, 2, 10), 0b111110);
        assert_eq!(lanes_inside(0, 2, 9), 0b11111);
        assert_eq!(lanes_inside(30, 2, 28), 0);
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, libm) = (super::exp(x), x.exp());
            let ulp = (libm.to_bits() as i64 - ours.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {ours}, libm {libm} ({ulp} ulp)");
            x += 0.001_37;
        }
        assert_eq!(super::exp(0.0), 1.0);
        assert_eq!(super::exp(-200.0), 0.0);
        assert!(super::exp(200.0) > 2e38 && super::exp(200.0).is_finite());
        assert!(super::exp(f32::NAN).is_nan());
    }
}
