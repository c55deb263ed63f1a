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
