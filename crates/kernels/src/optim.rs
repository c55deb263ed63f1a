//! Optimizer steps as one parallel pass over a parameter and its state.
//!
//! burn's optimizers compose each step from tensor operations: AdamW is about fifteen of them
//! (each a full pass over the parameter, most allocating a new tensor), SGD with momentum five,
//! and flex runs every one on the calling thread while the worker pool idles. Here each element
//! goes through the whole update in registers, the parameter and its moments are updated in
//! place, and the pass is split over the pool. The arithmetic is burn's, operation by operation
//! in the same order and precision, so a step gives the same values as burn's optimizer.

use rayon::prelude::*;

use crate::simd::widest;

/// Elements per parallel task: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 1 << 15;

/// One AdamW step's constants (burn's `AdamW` without AMSGrad or cautious weight decay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
    /// The step's number, counting from 1 (the bias corrections' exponent).
    pub time: usize,
}

/// One AdamW step in place: the moments `m` and `v` (ignored and written when `time` is 1, as
/// burn starts them from the first gradient), then the parameter.
pub fn adamw(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], step: &AdamWStep) {
    assert!(grad.len() == param.len() && m.len() == param.len() && v.len() == param.len(), "AdamW operand sizes");
    assert!(step.time >= 1, "AdamW steps count from 1");
    let (b1, b2, eps) = (step.beta_1, step.beta_2, step.epsilon);
    let (f1, f2) = (1.0 - b1, 1.0 - b2);
    let first = step.time == 1;
    let time = step.time as i32;
    let (c1, c2) = (1f32 - b1.powi(time), 1f32 - b2.powi(time));
    let decay_rate = step.lr * step.weight_decay as f64;
    // burn multiplies f32 tensors by f64 scalars cast to f32.
    let keep = (1.0 - decay_rate) as f32;
    let lr = step.lr as f32;
    let decays = decay_rate != 0.0;
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            widest(
                #[inline(always)]
                || {
                    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                        let (m1, m2) =
                            if first { (g * f1, (g * g) * f2) } else { (*m * b1 + g * f1, *v * b2 + (g * g) * f2) };
                        *m = m1;
                        *v = m2;
                        let delta = (m1 / c1) / ((m2 / c2).sqrt() + eps);
                        let decayed = if decays { *p * keep } else { *p };
                        *p = decayed - delta * lr;
                    }
                },
            )
        });
}

/// One SGD step's constants (burn's `Sgd`: optional L2 weight decay, then optional momentum).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdStep {
    pub lr: f64,
    /// L2 penalty added to the gradient (`grad + weight_decay·param`); `None`: none.
    pub weight_decay: Option<f32>,
    /// `(momentum, dampening, nesterov)`; `None`: plain SGD.
    pub momentum: Option<(f32, f64, bool)>,
}

/// One SGD step in place. `velocity` (the momentum buffer; required with momentum) is written
/// from the gradient when `first`, as burn starts it, and updated otherwise.
pub fn sgd(param: &mut [f32], grad: &[f32], velocity: Option<&mut [f32]>, first: bool, step: &SgdStep) {
    assert_eq!(grad.len(), param.len(), "SGD operand sizes");
    let lr = step.lr as f32;
    let decay = step.weight_decay;
    match (step.momentum, velocity) {
        (None, _) => param.par_chunks_mut(CHUNK).zip(grad.par_chunks(CHUNK)).for_each(|(p, g)| {
            widest(
                #[inline(always)]
                || {
                    for (p, &g) in p.iter_mut().zip(g) {
                        let g = match decay {
                            Some(wd) => *p * wd + g,
                            None => g,
                        };
                        *p -= g * lr;
                    }
                },
            )
        }),
        (Some((momentum, dampening, nesterov)), Some(velocity)) => {
            assert_eq!(velocity.len(), param.len(), "SGD velocity size");
            let keep = (1.0 - dampening) as f32;
            param.par_chunks_mut(CHUNK).zip(grad.par_chunks(CHUNK)).zip(velocity.par_chunks_mut(CHUNK)).for_each(
                |((p, g), vel)| {
                    widest(
                        #[inline(always)]
                        || {
                            for ((p, &g), vel) in p.iter_mut().zip(g).zip(vel.iter_mut()) {
                                let g = match decay {
                                    Some(wd) => *p * wd + g,
                                    None => g,
                                };
                                let v = if first { g } else { g * keep + *vel * momentum };
                                *vel = v;
                                let g = if nesterov { v * momentum + g } else { v };
                                *p -= g * lr;
                            }
                        },
                    )
                },
            )
        }
        (Some(_), None) => panic!("SGD with momentum needs its velocity buffer"),
    }
}

/// One LAMB step's constants (burn's `Lamb`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LambStep {
    pub lr: f64,
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    /// Added to the Adam update as `weight_decay · param`, before the trust ratio.
    pub weight_decay: f32,
    /// Scale the update by `‖param‖ / ‖update‖` (1 where either norm is 0).
    pub use_trust_ratio: bool,
    /// The step's number, counting from 1.
    pub time: usize,
}

/// One LAMB step in place: the moments `m` and `v` (ignored and written when `time` is 1), then
/// the parameter. Two parallel passes: the moments with both norms, then the parameter (its
/// update recomputed from the moments, bit for bit the first pass's, rather than stored).
///
/// Element by element the arithmetic is burn's; the norms are sums in another order (per task in
/// f64, then the tasks'), so the trust ratio can differ from burn's in its last bits.
pub fn lamb(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], step: &LambStep) {
    assert!(grad.len() == param.len() && m.len() == param.len() && v.len() == param.len(), "LAMB operand sizes");
    assert!(step.time >= 1, "LAMB steps count from 1");
    let (b1, b2, eps, wd) = (step.beta_1, step.beta_2, step.epsilon, step.weight_decay);
    let (f1, f2) = (1.0 - b1, 1.0 - b2);
    let first = step.time == 1;
    let time = step.time as i32;
    let (c1, c2) = (1f32 - b1.powi(time), 1f32 - b2.powi(time));
    let constants = [c1, c2, eps, wd];
    let (param_sq, update_sq) = param
        .par_chunks(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .map(|(((p, g), m), v)| {
            widest(
                #[inline(always)]
                || {
                    let (mut param_sq, mut update_sq) = (0f64, 0f64);
                    for (((&p, &g), m), v) in p.iter().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                        let (m1, m2) =
                            if first { (g * f1, (g * g) * f2) } else { (*m * b1 + g * f1, *v * b2 + (g * g) * f2) };
                        *m = m1;
                        *v = m2;
                        let u = lamb_update(p, m1, m2, constants);
                        param_sq += (p * p) as f64;
                        update_sq += (u * u) as f64;
                    }
                    (param_sq, update_sq)
                },
            )
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    // burn: ‖p‖ / max(‖u‖, smallest normal), and 1 unless both norms are positive.
    let (param_norm, update_norm) = ((param_sq as f32).sqrt(), (update_sq as f32).sqrt());
    let ratio = if !step.use_trust_ratio {
        None
    } else if param_norm > 0.0 && update_norm > 0.0 {
        Some(param_norm / update_norm.max(f32::MIN_POSITIVE))
    } else {
        Some(1.0)
    };
    let lr = step.lr as f32;
    param.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK)).zip(v.par_chunks(CHUNK)).for_each(|((p, m), v)| {
        widest(
            #[inline(always)]
            || {
                for ((p, &m1), &m2) in p.iter_mut().zip(m).zip(v) {
                    let u = lamb_update(*p, m1, m2, constants);
                    let u = match ratio {
                        Some(ratio) => u * ratio,
                        None => u,
                    };
                    *p -= u * lr;
                }
            },
        )
    });
}

/// LAMB's update before the trust ratio: the bias-corrected Adam direction plus weight decay
/// (`constants`: both bias corrections, epsilon, weight decay). A function, not a closure, so
/// that it is inlined into the vectorised loops.
#[inline(always)]
fn lamb_update(p: f32, m1: f32, m2: f32, [c1, c2, eps, wd]: [f32; 4]) -> f32 {
    let u = (m1 / c1) / ((m2 / c2).sqrt() + eps);
    if wd != 0.0 { u + p * wd } else { u }
}
