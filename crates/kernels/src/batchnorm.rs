//! Training-mode batch normalisation on plain `f32` slices (NCHW, contiguous), forward and
//! backward, two passes over the activations each way.
//!
//! burn computes it from generic tensor operations: the statistics through a swap of the batch
//! and channel dimensions (a full layout copy), a mean, a subtraction, a square, a second copy and
//! mean; the normalisation as four broadcast operations; the backward as a dozen more. Here:
//!
//! - forward: per channel (in parallel), the mean and the biased variance (accumulated in f64,
//!   the channel's values read twice while they are in cache); then per plane,
//!   `(x − μ)·γ/σ + β`.
//! - backward: `Σ dy` and `Σ dy·x̂` of each plane (in memory order), added per channel; then per
//!   plane, `dx = γ/σ · (dy − Σdy/n − x̂ · Σdy·x̂/n)`, with `x̂ = (x − μ)/σ`, `σ = √(var + ε)`.

use rayon::prelude::*;

use std::mem::MaybeUninit;

use crate::simd::{lane_sums2, par_filled, widest};

/// Input `[batch, channels, plane]` (`plane` = height · width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormGeometry {
    pub batch: usize,
    pub channels: usize,
    pub plane: usize,
}

impl NormGeometry {
    fn len(&self) -> usize {
        self.batch * self.channels * self.plane
    }

    /// Values per channel.
    fn count(&self) -> usize {
        self.batch * self.plane
    }

    /// The planes of `channel`, one per image.
    fn planes<'a>(&self, data: &'a [f32], channel: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        let (plane, stride) = (self.plane, self.channels * self.plane);
        (0..self.batch).map(move |b| &data[b * stride + channel * plane..][..plane])
    }
}

/// The output, and the batch mean and biased variance per channel.
pub struct NormForward {
    pub output: Vec<f32>,
    pub mean: Vec<f32>,
    pub variance: Vec<f32>,
}

/// The gradients with respect to the input, γ and β.
pub struct NormBackward {
    pub x_grad: Vec<f32>,
    pub gamma_grad: Vec<f32>,
    pub beta_grad: Vec<f32>,
}

/// Values per parallel task of [`per_plane`] (whole planes, at least one).
const TASK_VALUES: usize = 1 << 13;

/// A new `[batch, channels, plane]` tensor, `f(plane index, channel, output plane)` writing every
/// value of each plane, in parallel: several planes per task where planes are small (a task per
/// 4×4 plane spent more in the thread pool than in the plane).
fn per_plane(g: &NormGeometry, f: impl Fn(usize, usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    let plane = g.plane.max(1);
    let planes_per_task = (TASK_VALUES / plane).max(1);
    par_filled(g.len(), planes_per_task * plane, |offset, out| {
        widest(
            #[inline(always)]
            || {
                for (i, out) in out.chunks_mut(plane).enumerate() {
                    let index = offset / plane + i;
                    f(index, index % g.channels, out);
                }
            },
        )
    })
}

/// Per channel, the two sums `f(plane index, channel)` gives for each of its planes, added in
/// image order. The planes are taken in memory order, several per parallel task: a channel's
/// planes lie `channels` planes apart, and reading them channel by channel jumped between
/// images — for small planes a few cache lines per jump, fetched without the prefetcher's help
/// (batch norm's backward sums on MobileNetV2's 7×7 and 4×4 layers took 1.5–2.5× as long).
/// The order of the sums does not depend on the number of threads.
fn channel_sums(g: &NormGeometry, f: impl Fn(usize, usize) -> (f64, f64) + Sync) -> Vec<(f64, f64)> {
    let planes_per_task = (TASK_VALUES / g.plane.max(1)).max(1);
    let mut plane_sums = vec![(0.0f64, 0.0f64); g.batch * g.channels];
    plane_sums.par_chunks_mut(planes_per_task).enumerate().for_each(|(task, sums)| {
        widest(
            #[inline(always)]
            || {
                for (i, sum) in sums.iter_mut().enumerate() {
                    let index = task * planes_per_task + i;
                    *sum = f(index, index % g.channels);
                }
            },
        )
    });
    (0..g.channels)
        .map(|c| {
            (0..g.batch).map(|b| plane_sums[b * g.channels + c]).fold((0.0, 0.0), |(s, d), (ps, pd)| (s + ps, d + pd))
        })
        .collect()
}

/// Each channel's `γ/σ` as the forward applies it, from the variance as returned (f32), so that
/// the backward recomputes the same pre-activation bit for bit.
fn scales(gamma: &[f32], variance: &[f32], epsilon: f64) -> Vec<f32> {
    gamma.iter().zip(variance).map(|(&gamma, &var)| (gamma as f64 / (var as f64 + epsilon).sqrt()) as f32).collect()
}

/// `relu_cap`: ReLU capped there applied to the output in the same pass (∞: ReLU, 6: ReLU6).
pub fn forward(
    g: &NormGeometry,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
    relu_cap: Option<f32>,
) -> NormForward {
    normalize(g, x, None, gamma, beta, epsilon, relu_cap)
}

/// [`forward`] with `residual` (as large as `x`) added before the activation — a residual
/// block's last batch norm, skip connection and ReLU in the passes of the batch norm alone
/// (instead of one more pass each for the sum and the ReLU, which also read and write the
/// activations). Bit for bit the three done one after the other.
#[allow(clippy::too_many_arguments)]
pub fn forward_with_residual(
    g: &NormGeometry,
    x: &[f32],
    residual: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
    relu_cap: Option<f32>,
) -> NormForward {
    assert_eq!(residual.len(), g.len(), "batch-norm residual size");
    normalize(g, x, Some(residual), gamma, beta, epsilon, relu_cap)
}

#[allow(clippy::too_many_arguments)]
fn normalize(
    g: &NormGeometry,
    x: &[f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
    relu_cap: Option<f32>,
) -> NormForward {
    assert_eq!(x.len(), g.len(), "batch-norm input size");
    assert_eq!((gamma.len(), beta.len()), (g.channels, g.channels), "batch-norm parameter sizes");
    let count = g.count().max(1) as f64;
    let stats: Vec<(f64, f64)> = (0..g.channels)
        .into_par_iter()
        .map(|c| {
            widest(
                #[inline(always)]
                || {
                    let planes = || g.planes(x, c).map(|p| (p, p));
                    let (sum, _) = lane_sums2(planes(), |v, _| (v, 0.0));
                    let mean = sum / count;
                    // The two-pass variance: no cancellation for channels with a large mean.
                    let m = mean as f32;
                    let (squares, _) = lane_sums2(planes(), |v, _| ((v - m) * (v - m), 0.0));
                    (mean, squares / count)
                },
            )
        })
        .collect();
    // (x − μ)·(γ/σ) + β: subtracting the mean first matches PyTorch's rounding; the folded
    // x·(γ/σ) + (β − μγ/σ) is as cheap but moved a deep ResNet's gradients off the parity
    // fixtures (rounding differences amplified through the ReLUs).
    let variance: Vec<f32> = stats.iter().map(|s| s.1 as f32).collect();
    let scales = scales(gamma, &variance, epsilon);
    let output = per_plane(
        g,
        #[inline(always)]
        |index, c, out| {
            let (mean, scale, shift) = (stats[c].0 as f32, scales[c], beta[c]);
            let x = &x[index * g.plane..][..g.plane];
            match (residual.map(|r| &r[index * g.plane..][..g.plane]), relu_cap) {
                (None, None) => out.iter_mut().zip(x).for_each(|(o, &v)| {
                    o.write((v - mean) * scale + shift);
                }),
                (None, Some(cap)) => out.iter_mut().zip(x).for_each(|(o, &v)| {
                    o.write(clamp_relu((v - mean) * scale + shift, cap));
                }),
                (Some(r), None) => out.iter_mut().zip(x).zip(r).for_each(|((o, &v), &r)| {
                    o.write(((v - mean) * scale + shift) + r);
                }),
                (Some(r), Some(cap)) => out.iter_mut().zip(x).zip(r).for_each(|((o, &v), &r)| {
                    o.write(clamp_relu(((v - mean) * scale + shift) + r, cap));
                }),
            }
        },
    );
    NormForward { output, mean: stats.iter().map(|s| s.0 as f32).collect(), variance }
}

/// `min(max(y, 0), cap)`, NaN staying NaN — the activation of [`forward`]'s `relu_cap`.
#[inline(always)]
fn clamp_relu(y: f32, cap: f32) -> f32 {
    let y = if y < 0.0 { 0.0 } else { y };
    if y > cap { cap } else { y }
}

/// Gradients of [`forward`] (with the same `relu_cap`; `beta` is needed only with one, to
/// recompute which outputs the clamp let through: `0 < y < cap`, as the clamp's own backward).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    g: &NormGeometry,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    variance: &[f32],
    epsilon: f64,
    out_grad: &[f32],
    relu_cap: Option<f32>,
) -> NormBackward {
    assert_eq!((x.len(), out_grad.len()), (g.len(), g.len()), "batch-norm input and gradient sizes");
    let count = g.count().max(1) as f64;
    let inv_std: Vec<f64> = variance.iter().map(|&v| 1.0 / (v as f64 + epsilon).sqrt()).collect();
    let scales = scales(gamma, variance, epsilon);
    let plane_sums = channel_sums(
        g,
        #[inline(always)]
        |index, c| {
            let (m, scale, shift) = (mean[c], scales[c], beta.get(c).copied().unwrap_or(0.0));
            let range = index * g.plane..(index + 1) * g.plane;
            let pair = std::iter::once((&out_grad[range.clone()], &x[range]));
            match relu_cap {
                None => lane_sums2(pair, |d, v| (d, d * (v - m))),
                Some(cap) => lane_sums2(pair, |d, v| {
                    let d = passed(d, (v - m) * scale + shift, cap);
                    (d, d * (v - m))
                }),
            }
        },
    );
    // `Σ dy·x̂ = σ⁻¹ · Σ dy·(x − μ)`.
    let sums: Vec<(f64, f64)> =
        plane_sums.iter().zip(&inv_std).map(|(&(sum, dot), &s)| (sum, dot * s as f32 as f64)).collect();
    let coefficients: Vec<(f32, f32, f32)> = (0..g.channels)
        .map(|c| {
            let (sum, dot) = sums[c];
            let k = gamma[c] as f64 * inv_std[c];
            let (a, b) = (sum / count, dot / count);
            (k as f32, a as f32, (-k * b * inv_std[c]) as f32)
        })
        .collect();
    let x_grad = per_plane(
        g,
        #[inline(always)]
        |index, c, out| {
            let (k, a, slope) = coefficients[c];
            let m = mean[c];
            let (scale, shift) = (scales[c], beta.get(c).copied().unwrap_or(0.0));
            let range = index * g.plane..(index + 1) * g.plane;
            let pairs = out.iter_mut().zip(&out_grad[range.clone()]).zip(&x[range]);
            match relu_cap {
                None => pairs.for_each(|((o, &d), &v)| {
                    o.write(k * (d - a) + slope * (v - m));
                }),
                Some(cap) => pairs.for_each(|((o, &d), &v)| {
                    let d = passed(d, (v - m) * scale + shift, cap);
                    o.write(k * (d - a) + slope * (v - m));
                }),
            }
        },
    );
    NormBackward {
        x_grad,
        gamma_grad: sums.iter().map(|s| s.1 as f32).collect(),
        beta_grad: sums.iter().map(|s| s.0 as f32).collect(),
    }
}

/// The gradient `d` where the clamp passed the pre-activation `y` (`0 < y < cap`), else 0.
#[inline(always)]
fn passed(d: f32, y: f32, cap: f32) -> f32 {
    if (y > 0.0) & (y < cap) { d } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32, offset: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 23) as f32 - 1.0
                    + offset
            })
            .collect()
    }

    /// The definition in f64: y = γ (x − μ)/√(σ² + ε) + β, and its gradients by central
    /// differences of `Σ y·dy` (the loss is smooth, so differences in f64 are exact to ~1e-7).
    fn loss(g: &NormGeometry, x: &[f64], gamma: &[f64], beta: &[f64], dy: &[f32], eps: f64, cap: Option<f64>) -> f64 {
        let n = g.count() as f64;
        let mut total = 0.0;
        for c in 0..g.channels {
            let idx: Vec<usize> =
                (0..g.batch).flat_map(|b| (0..g.plane).map(move |p| (b * g.channels + c) * g.plane + p)).collect();
            let mean = idx.iter().map(|&i| x[i]).sum::<f64>() / n;
            let var = idx.iter().map(|&i| (x[i] - mean).powi(2)).sum::<f64>() / n;
            for &i in &idx {
                let y = gamma[c] * (x[i] - mean) / (var + eps).sqrt() + beta[c];
                let y = match cap {
                    Some(cap) => y.clamp(0.0, cap),
                    None => y,
                };
                total += y * dy[i] as f64;
            }
        }
        total
    }

    /// With a residual: the batch norm, the sum and the activation one after the other, bit for
    /// bit.
    #[test]
    fn forward_with_residual_is_the_three_steps() {
        let g = NormGeometry { batch: 3, channels: 4, plane: 37 };
        let (x, r) = (values(g.len(), 1, 3.0), values(g.len(), 5, 0.2));
        let (gamma, beta) = (values(g.channels, 2, 1.0), values(g.channels, 3, 0.0));
        for cap in [None, Some(f32::INFINITY), Some(0.5)] {
            let plain = forward(&g, &x, &gamma, &beta, 1e-5, None);
            let fused = forward_with_residual(&g, &x, &r, &gamma, &beta, 1e-5, cap);
            let expected: Vec<f32> =
                plain.output.iter().zip(&r).map(|(&y, &r)| cap.map_or(y + r, |cap| clamp_relu(y + r, cap))).collect();
            assert_eq!(fused.output, expected, "cap {cap:?}");
            assert_eq!((fused.mean, fused.variance), (plain.mean, plain.variance));
            if cap.is_some() {
                assert!(expected.contains(&0.0) && expected.iter().any(|&y| y > 0.0));
            }
        }
    }

    /// Channels whose mean is far from zero against their spread (10⁴ and a standard deviation
    /// near 0.6, or a mean of −300 with images offset from each other): the statistics match
    /// the two-pass definition in f64 (a one-pass `E[x²] − μ²` would cancel).
    #[test]
    fn statistics_hold_for_channels_with_a_large_mean() {
        let g = NormGeometry { batch: 4, channels: 3, plane: 49 };
        let mut x = values(g.len(), 7, 0.0);
        for (i, v) in x.iter_mut().enumerate() {
            let (image, channel) = (i / (g.channels * g.plane), i / g.plane % g.channels);
            *v += [1e4, -300.0 + image as f32, 0.25][channel];
        }
        let (gamma, beta) = (vec![1.0; g.channels], vec![0.0; g.channels]);
        let f = forward(&g, &x, &gamma, &beta, 1e-5, None);
        for c in 0..g.channels {
            let values: Vec<f64> = (0..g.batch)
                .flat_map(|b| x[(b * g.channels + c) * g.plane..][..g.plane].iter().map(|&v| v as f64))
                .collect();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
            assert!((f.mean[c] as f64 - mean).abs() <= 1e-6 * mean.abs().max(1.0), "mean {c}: {} vs {mean}", f.mean[c]);
            assert!(
                (f.variance[c] as f64 - variance).abs() <= 1e-4 * variance,
                "variance {c}: {} vs {variance}",
                f.variance[c]
            );
        }
    }

    /// The backward's sums over many parallel tasks (planes of 4 values: 2048 planes per task,
    /// so each channel's planes fall in several): `∂β = Σ dy` and `∂γ = Σ dy·x̂` per channel, as
    /// f64 sums over the channel's values in any order.
    #[test]
    fn gradient_sums_add_every_plane_of_their_channel() {
        let g = NormGeometry { batch: 3000, channels: 3, plane: 4 };
        let (x, dy) = (values(g.len(), 11, 0.5), values(g.len(), 12, 0.1));
        let (gamma, beta) = (vec![1.5, 0.5, -1.0], vec![0.0; 3]);
        let f = forward(&g, &x, &gamma, &beta, 1e-5, None);
        let b = backward(&g, &x, &gamma, &beta, &f.mean, &f.variance, 1e-5, &dy, None);
        for c in 0..g.channels {
            let inv_std = 1.0 / (f.variance[c] as f64 + 1e-5).sqrt();
            let (mut sum, mut dot) = (0.0f64, 0.0f64);
            for i in (0..g.len()).filter(|i| i / g.plane % g.channels == c) {
                sum += dy[i] as f64;
                dot += dy[i] as f64 * (x[i] as f64 - f.mean[c] as f64) * inv_std;
            }
            assert!(
                (b.beta_grad[c] as f64 - sum).abs() <= 1e-5 * sum.abs().max(1.0),
                "dβ {c}: {} vs {sum}",
                b.beta_grad[c]
            );
            assert!(
                (b.gamma_grad[c] as f64 - dot).abs() <= 1e-5 * dot.abs().max(1.0),
                "dγ {c}: {} vs {dot}",
                b.gamma_grad[c]
            );
        }
    }

    /// Plain, and with ReLU and a low cap (both sides of the clamp) fused in.
    #[test]
    fn forward_and_gradients_are_the_definition() {
        for cap in [None, Some(f32::INFINITY), Some(0.5)] {
            check(cap);
        }
    }

    fn check(cap: Option<f32>) {
        let g = NormGeometry { batch: 3, channels: 4, plane: 5 };
        let eps = 1e-5;
        // An offset mean, as real activations have.
        let x = values(g.len(), 1, 3.0);
        let gamma = values(g.channels, 2, 1.0);
        let beta = values(g.channels, 3, 0.0);
        let dy = values(g.len(), 4, 0.0);
        let f = forward(&g, &x, &gamma, &beta, eps, cap);
        let cap64 = cap.map(f64::from);
        let to64 = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<_>>();
        let (x64, gamma64, beta64) = (to64(&x), to64(&gamma), to64(&beta));
        // Forward: the loss with one-hot dy is each output.
        for i in 0..g.len() {
            let mut onehot = vec![0.0f32; g.len()];
            onehot[i] = 1.0;
            let expected = loss(&g, &x64, &gamma64, &beta64, &onehot, eps, cap64);
            assert!((f.output[i] as f64 - expected).abs() < 1e-4, "output {i}: {} vs {expected}", f.output[i]);
        }
        let b = backward(&g, &x, &gamma, &beta, &f.mean, &f.variance, eps, &dy, cap);
        let h = 1e-4;
        let numeric = |which: usize, i: usize| {
            let (mut xp, mut gp, mut bp) = (x64.clone(), gamma64.clone(), beta64.clone());
            let (mut xm, mut gm, mut bm) = (x64.clone(), gamma64.clone(), beta64.clone());
            match which {
                0 => (xp[i] += h, xm[i] -= h),
                1 => (gp[i] += h, gm[i] -= h),
                _ => (bp[i] += h, bm[i] -= h),
            };
            (loss(&g, &xp, &gp, &bp, &dy, eps, cap64) - loss(&g, &xm, &gm, &bm, &dy, eps, cap64)) / (2.0 * h)
        };
        for i in 0..g.len() {
            let expected = numeric(0, i);
            assert!((b.x_grad[i] as f64 - expected).abs() < 1e-3, "dx {i} ({cap:?}): {} vs {expected}", b.x_grad[i]);
        }
        if let Some(cap) = cap {
            let clamped = f.output.iter().filter(|&&y| y == 0.0 || y == cap).count();
            assert!(clamped > 0 && clamped < g.len(), "the clamp must matter ({clamped} clamped)");
        }
        for c in 0..g.channels {
            assert!((b.gamma_grad[c] as f64 - numeric(1, c)).abs() < 1e-3, "dgamma {c}");
            assert!((b.beta_grad[c] as f64 - numeric(2, c)).abs() < 1e-3, "dbeta {c}");
        }
    }
}
