//! SGD, AdamW and LAMB as burn optimizers whose step is one kernel call per parameter.
//!
//! burn's `Sgd` and `AdamW` compose a step from tensor operations — five passes over each
//! parameter for SGD with momentum, about fifteen for AdamW — which flex runs one after the other
//! on the calling thread while the worker pool idles. These compute the same arithmetic in one
//! parallel pass ([`deeptune_kernels::adamw_step`], [`deeptune_kernels::sgd_step`]; LAMB in two,
//! [`deeptune_kernels::lamb_step`]; burn's own operations on other devices) and keep burn's state types, so the records in checkpoints are
//! the ones burn's optimizers write and read.

use burn::optim::{
    AdamWState, AdaptiveMomentumState, LambState, LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink,
    StateSource, join_path,
};
use burn::prelude::*;
use deeptune_kernels::{AdamWStep, LambStep, SgdStep, adamw_step, lamb_step, sgd_step};

/// AdamW (decoupled weight decay, bias-corrected moments; no AMSGrad).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedAdamW {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
}

impl FusedAdamW {
    /// As a module optimizer of its own (one group, no clipping).
    pub fn init(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (time, moments) = match state {
            Some(AdamWState { momentum }) => (momentum.time + 1, Some((momentum.moment_1, momentum.moment_2))),
            None => (1, None),
        };
        let step = AdamWStep {
            lr,
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            time,
        };
        let (tensor, moment_1, moment_2) = adamw_step(tensor, grad, moments, step);
        (tensor, Some(AdamWState::new(AdaptiveMomentumState::new(time, moment_1, moment_2))))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

/// LAMB: AdamW's direction plus weight decay, scaled per parameter by `‖param‖ / ‖update‖`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedLamb {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
    pub use_trust_ratio: bool,
}

impl FusedLamb {
    /// As a module optimizer of its own (one group, no clipping).
    pub fn init(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }
}

impl Optimizer for FusedLamb {
    type State<const D: usize> = LambState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (time, moments) = match state {
            Some(state) => (state.time + 1, Some((state.moment_1, state.moment_2))),
            None => (1, None),
        };
        let step = LambStep {
            lr,
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            use_trust_ratio: self.use_trust_ratio,
            time,
        };
        let (tensor, moment_1, moment_2) = lamb_step(tensor, grad, moments, step);
        (tensor, Some(LambState { time, moment_1, moment_2 }))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.moment_1 = state.moment_1.to_device(device);
        state.moment_2 = state.moment_2.to_device(device);
        state
    }
}

/// SGD with optional L2 weight decay and momentum (dampening, Nesterov), as burn's `Sgd`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedSgd {
    pub weight_decay: Option<f32>,
    /// `(momentum, dampening, nesterov)`.
    pub momentum: Option<(f32, f64, bool)>,
}

impl FusedSgd {
    /// As a module optimizer of its own (one group, no clipping).
    pub fn init(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }
}

/// SGD's state: the momentum buffer. Recorded under the names burn's `SgdState` uses
/// (`momentum.velocity`), so checkpoints read and write the same leaves. (burn's `MomentumState`
/// does not let its buffer out, hence a type of our own.)
#[derive(Clone)]
pub struct FusedSgdState<const D: usize> {
    pub velocity: Option<Tensor<D>>,
}

impl<const D: usize> RecordState for FusedSgdState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        if let Some(velocity) = &self.velocity {
            out.push_tensor(&join_path(prefix, "momentum"), "velocity", velocity.clone().into_data());
        }
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let velocity = src.take_tensor(&join_path(prefix, "momentum"), "velocity");
        Some(FusedSgdState { velocity: velocity.map(|data| Tensor::from_data(data, device)) })
    }
}

impl Optimizer for FusedSgd {
    type State<const D: usize> = FusedSgdState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let velocity = state.and_then(|state| state.velocity);
        let step = SgdStep { lr, weight_decay: self.weight_decay, momentum: self.momentum };
        let (tensor, velocity) = sgd_step(tensor, grad, velocity, step);
        (tensor, Some(FusedSgdState { velocity }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        FusedSgdState { velocity: state.velocity.map(|velocity| velocity.to_device(device)) }
    }
}

#[cfg(test)]
mod tests {
    use burn::optim::decay::WeightDecayConfig;
    use burn::optim::momentum::MomentumConfig;
    use burn::optim::{AdamWConfig, LambConfig, SgdConfig};

    use super::*;

    /// More elements than one parallel task takes, and not a multiple of it.
    const LEN: usize = 100_003;

    fn values(seed: u32) -> Vec<f32> {
        (0..LEN as u32)
            .map(|i| {
                (i.wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(97_531)) >> 8) as f32 / 8_388_608.0 - 1.0
            })
            .collect()
    }

    fn tensor(values: Vec<f32>) -> Tensor<1> {
        Tensor::from_data(TensorData::new(values, [LEN]), &Device::flex())
    }

    fn host(tensor: &Tensor<1>) -> Vec<f32> {
        tensor.to_data().try_into_vec::<f32>().unwrap()
    }

    /// A state's recorded tensors: name and values.
    type Leaves = Vec<(String, Vec<f32>)>;

    /// The parameter after each of four steps (learning rate changing), and the final state's
    /// recorded leaves.
    fn trajectory<O: Optimizer>(optimizer: &O) -> (Vec<Vec<f32>>, Leaves) {
        let mut param = tensor(values(0));
        let mut state = None;
        let mut params = Vec::new();
        for step in 0..4 {
            let lr = 0.05 / (step + 1) as f64;
            let (next, next_state) = optimizer.step(lr, param, tensor(values(step + 1)), state);
            params.push(host(&next));
            (param, state) = (next, next_state);
        }
        let mut sink = StateSink::default();
        state.expect("a state after a step").state_flatten("p", &mut sink);
        let mut leaves: Vec<_> =
            sink.tensors.into_iter().map(|(name, data)| (name, data.try_into_vec::<f32>().unwrap())).collect();
        leaves.sort_by(|a, b| a.0.cmp(&b.0));
        (params, leaves)
    }

    #[test]
    fn adamw_steps_and_records_are_burns() {
        let fused = FusedAdamW { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8, weight_decay: 0.01 };
        let burns = AdamWConfig::new().with_beta_1(0.9).with_beta_2(0.999).with_epsilon(1e-8).with_weight_decay(0.01);
        let (ours, ours_state) = trajectory(&fused);
        let (theirs, theirs_state) = trajectory(&burns.build());
        assert_eq!(ours, theirs);
        assert_eq!(ours_state, theirs_state);
        assert_eq!(
            ours_state.iter().map(|l| l.0.as_str()).collect::<Vec<_>>(),
            ["p.momentum.moment_1", "p.momentum.moment_2"]
        );
    }

    #[test]
    fn sgd_steps_and_records_are_burns() {
        for (momentum, nesterov, decay) in [(0.9, false, Some(1e-4)), (0.9, true, None), (0.0, false, Some(1e-2))] {
            let fused = FusedSgd {
                weight_decay: decay,
                momentum: (momentum > 0.0).then_some((momentum as f32, 0.0, nesterov)),
            };
            let burns = SgdConfig::new()
                .with_weight_decay(decay.map(WeightDecayConfig::new))
                .with_momentum((momentum > 0.0).then(|| {
                    MomentumConfig::new().with_momentum(momentum).with_dampening(0.0).with_nesterov(nesterov)
                }));
            let (ours, ours_state) = trajectory(&fused);
            let (theirs, theirs_state) = trajectory(&burns.build());
            assert_eq!(ours, theirs, "momentum {momentum}, Nesterov {nesterov}, decay {decay:?}");
            assert_eq!(ours_state, theirs_state, "momentum {momentum}, Nesterov {nesterov}, decay {decay:?}");
        }
    }

    #[test]
    fn lamb_steps_and_records_are_burns() {
        for (weight_decay, use_trust_ratio) in [(0.01, true), (0.0, true), (0.01, false)] {
            let fused = FusedLamb { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-6, weight_decay, use_trust_ratio };
            let burns = LambConfig::new()
                .with_beta_1(0.9)
                .with_beta_2(0.999)
                .with_epsilon(1e-6)
                .with_weight_decay(weight_decay)
                .with_use_trust_ratio(use_trust_ratio);
            let (ours, ours_state) = trajectory(&fused);
            let (theirs, theirs_state) = trajectory(&burns.build());
            let case = format!("weight decay {weight_decay}, trust ratio {use_trust_ratio}");
            // The moments are burn's bit for bit; the parameter differs at most in the last bits
            // of the trust ratio (its norms are sums in another order).
            assert_eq!(ours_state, theirs_state, "{case}");
            for (step, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                let worst = a.iter().zip(b).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0f32, f32::max);
                assert!(worst < 1e-6, "{case}: step {step} differs from burn's by {worst}");
                if !use_trust_ratio {
                    assert_eq!(a, b, "{case}: step {step}");
                }
            }
        }
    }

    #[test]
    fn a_step_leaves_other_holders_of_the_parameter_untouched() {
        let param = tensor(values(0));
        let kept = param.clone();
        let optimizer = FusedAdamW { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8, weight_decay: 0.01 };
        let (stepped, _) = optimizer.step(0.1, param, tensor(values(1)), None);
        assert_eq!(host(&kept), values(0));
        assert_ne!(host(&stepped), values(0));
    }
}
