//! Vectorisation helpers for the kernels' loops.

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
