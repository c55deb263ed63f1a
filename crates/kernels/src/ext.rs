//! [`DeepKernels`]: the backend extension, its implementations, and the `Tensor` wrapper.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, IntDType, Shape, Tensor, TensorData};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};

use crate::batchnorm::{self, NormGeometry};
use crate::conv::{self, ConvGeometry, Epilogue, EpilogueActivation};
use crate::depthwise;
use crate::maxpool::{self, PoolGeometry};
use crate::optim::{self, AdamWStep, LambStep, SgdStep};
use crate::prepared::WeightsOwner;
use crate::simd::par_filled;

/// Operations with our own kernels on some backends. The default bodies are burn's own
/// operations, so a backend without a kernel of ours computes exactly what burn would.
#[backend_extension(Flex, Cube: cfg(feature = "cuda"), Autodiff)]
pub trait DeepKernels: Backend {
    /// A depthwise convolution without bias (`weight`: `[channels, 1, kh, kw]`, `groups` ==
    /// channels).
    fn depthwise_conv2d(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, options)
    }

    /// A dense convolution (`groups` = 1) without bias.
    fn dense_conv2d(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        burn_conv2d::<Self>(x, weight, options)
    }

    /// The gradients of [`DeepKernels::dense_conv2d`] with respect to `x` (if `want_x`) and
    /// `weight` (if `want_weight`).
    fn dense_conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        out_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        want_x: bool,
        want_weight: bool,
    ) -> (Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
        burn_dense_backward::<Self>(x, weight, out_grad, options, want_x, want_weight)
    }

    /// Inference: `conv(x, weight)·scale[c] + shift[c]`, then `activation` — a convolution, a
    /// batch norm with running statistics folded into `scale` and `shift`, and the activation, as
    /// one operation.
    fn conv2d_scale_shift(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        options: ConvOptions<2>,
        activation: EpilogueActivation,
    ) -> FloatTensor<Self> {
        burn_conv2d_scale_shift::<Self>(x, weight, scale, shift, options, activation, None)
    }

    /// [`DeepKernels::conv2d_scale_shift`] with a skip connection added before the activation:
    /// `activation(conv(x, weight)·scale[c] + shift[c] + residual)`, `residual` shaped as the
    /// output (ResNet's blocks, MobileNetV2's inverted residuals).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_scale_shift_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        options: ConvOptions<2>,
        activation: EpilogueActivation,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        burn_conv2d_scale_shift::<Self>(x, weight, scale, shift, options, activation, Some(residual))
    }

    /// 2-D max pooling (no dilation, floor mode), padding counting as −∞.
    fn pool_max2d(
        x: FloatTensor<Self>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        burn_pool_max2d::<Self>(x, kernel, stride, padding)
    }

    /// The input gradient of [`DeepKernels::pool_max2d`] from its input and output.
    fn pool_max2d_backward(
        x: FloatTensor<Self>,
        output: FloatTensor<Self>,
        out_grad: FloatTensor<Self>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        burn_pool_max2d_backward::<Self>(x, output, out_grad, kernel, stride, padding)
    }

    /// Training-mode batch normalisation over `[batch, channels, ...]`, then ReLU capped at
    /// `relu_cap` if there is one (∞: ReLU, 6: ReLU6): the output, and the batch mean and biased
    /// variance per channel (`[channels]`).
    fn batch_norm_training(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu_cap: Option<f32>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        burn_batch_norm_training::<Self>(x, gamma, beta, epsilon, relu_cap)
    }

    /// The gradients of [`DeepKernels::batch_norm_training`] with respect to `x`, `gamma` and
    /// `beta`, from the statistics it returned.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_training_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        out_grad: FloatTensor<Self>,
        relu_cap: Option<f32>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        burn_batch_norm_training_backward::<Self>(x, gamma, beta, mean, variance, epsilon, out_grad, relu_cap)
    }

    /// [`DeepKernels::batch_norm_training`] with `residual` added before the activation: a
    /// residual block's last batch norm, skip connection and ReLU. (Its backward is the clamp's
    /// and the batch norm's: no kernel of its own.)
    fn batch_norm_residual_training(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
        relu_cap: Option<f32>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        unfused_batch_norm_residual_training::<Self>(x, gamma, beta, residual, epsilon, relu_cap)
    }

    /// `min(max(x, 0), cap)`: ReLU (`cap` infinite) or ReLU6 (`cap` 6).
    fn clamped_relu(x: FloatTensor<Self>, cap: f32) -> FloatTensor<Self> {
        burn_clamped_relu::<Self>(x, cap)
    }

    /// The gradient of [`DeepKernels::clamped_relu`] from its output: `grad` where `0 < output <
    /// cap`, else 0 (PyTorch's `hardtanh_backward`).
    fn clamped_relu_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>, cap: f32) -> FloatTensor<Self> {
        burn_clamped_relu_backward::<Self>(output, grad, cap)
    }

    /// SiLU, `x · sigmoid(x)`.
    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        burn_silu::<Self>(x)
    }

    /// The gradient of [`DeepKernels::silu`] from its input: `grad · s · (1 + x · (1 − s))`,
    /// `s = sigmoid(x)`.
    fn silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        burn_silu_backward::<Self>(x, grad)
    }

    /// The gradients of [`DeepKernels::depthwise_conv2d`] with respect to `x` and `weight`.
    fn depthwise_conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        out_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        burn_backward::<Self>(x, weight, out_grad, options)
    }

    /// One AdamW step (burn's `AdamW` without AMSGrad or cautious decay): the parameter and its
    /// two moments after it. On the first step (`step.time` 1) the moments passed in are only
    /// buffers of the parameter's shape; their values are not read.
    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let moments = (step.time > 1).then_some((moment_1, moment_2));
        burn_adamw_step::<Self>(param, grad, moments, step)
    }

    /// One LAMB step (burn's `Lamb`): the parameter and its two moments after it. On the first
    /// step (`step.time` 1) the moments passed in are only buffers of the parameter's shape.
    fn lamb_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: LambStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let moments = (step.time > 1).then_some((moment_1, moment_2));
        burn_lamb_step::<Self>(param, grad, moments, step)
    }

    /// One SGD step (burn's `Sgd`): the parameter and its momentum buffer after it. On the first
    /// step (`first`), or without momentum, the buffer passed in is not read (and without
    /// momentum it is returned as it came).
    fn sgd_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        velocity: FloatTensor<Self>,
        step: SgdStep,
        first: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let previous = (!first && step.momentum.is_some()).then(|| velocity.clone());
        let (param, updated) = burn_sgd_step::<Self>(param, grad, previous, step);
        (param, updated.unwrap_or(velocity))
    }
}

/// burn's `Lamb::step`, operation by operation.
fn burn_lamb_step<B: Backend>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    moments: Option<(FloatTensor<B>, FloatTensor<B>)>,
    step: LambStep,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (f1, f2) = (1.0 - step.beta_1, 1.0 - step.beta_2);
    let square = |t: FloatTensor<B>| B::float_powi_scalar(t, 2.into());
    let (m1, m2) = match moments {
        Some((m1, m2)) => (
            B::float_add(B::float_mul_scalar(m1, step.beta_1.into()), B::float_mul_scalar(grad.clone(), f1.into())),
            B::float_add(B::float_mul_scalar(m2, step.beta_2.into()), B::float_mul_scalar(square(grad), f2.into())),
        ),
        None => (B::float_mul_scalar(grad.clone(), f1.into()), B::float_mul_scalar(square(grad), f2.into())),
    };
    let time = step.time as i32;
    let m1_corrected = B::float_div_scalar(m1.clone(), (1f32 - step.beta_1.powi(time)).into());
    let m2_corrected = B::float_div_scalar(m2.clone(), (1f32 - step.beta_2.powi(time)).into());
    let mut update = B::float_div(m1_corrected, B::float_add_scalar(B::float_sqrt(m2_corrected), step.epsilon.into()));
    if step.weight_decay != 0.0 {
        update = B::float_add(update, B::float_mul_scalar(param.clone(), step.weight_decay.into()));
    }
    if step.use_trust_ratio {
        let norm = |t: FloatTensor<B>| B::float_sqrt(B::float_sum(square(t)));
        let (param_norm, update_norm) = (norm(param.clone()), norm(update.clone()));
        let bool_dtype = burn::backend::get_or_init_device_settings::<B>(&param.device()).bool_dtype;
        let valid = B::bool_and(
            B::float_greater_elem(param_norm.clone(), 0f32.into(), bool_dtype),
            B::float_greater_elem(update_norm.clone(), 0f32.into(), bool_dtype),
        );
        let ratio = B::float_div(param_norm, B::float_clamp_min(update_norm, f32::MIN_POSITIVE.into()));
        let ones = B::float_ones(ratio.shape(), &ratio.device(), ratio.dtype().into());
        let trust = B::float_mask_where(ones, valid, ratio);
        let trust = B::float_reshape(trust, Shape::new_raw(vec![1; param.shape().num_dims()].into()));
        update = B::float_mul(update, trust);
    }
    (B::float_sub(param, B::float_mul_scalar(update, step.lr.into())), m1, m2)
}

/// burn's `AdamW::step`, operation by operation.
fn burn_adamw_step<B: Backend>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    moments: Option<(FloatTensor<B>, FloatTensor<B>)>,
    step: AdamWStep,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (f1, f2) = (1.0 - step.beta_1, 1.0 - step.beta_2);
    let square = B::float_mul(grad.clone(), grad.clone());
    let (m1, m2) = match moments {
        Some((m1, m2)) => (
            B::float_add(B::float_mul_scalar(m1, step.beta_1.into()), B::float_mul_scalar(grad, f1.into())),
            B::float_add(B::float_mul_scalar(m2, step.beta_2.into()), B::float_mul_scalar(square, f2.into())),
        ),
        None => (B::float_mul_scalar(grad, f1.into()), B::float_mul_scalar(square, f2.into())),
    };
    let time = step.time as i32;
    let m1_corrected = B::float_div_scalar(m1.clone(), (1f32 - step.beta_1.powi(time)).into());
    let m2_corrected = B::float_div_scalar(m2.clone(), (1f32 - step.beta_2.powi(time)).into());
    let delta = B::float_div(m1_corrected, B::float_add_scalar(B::float_sqrt(m2_corrected), step.epsilon.into()));
    let decay_rate = step.lr * step.weight_decay as f64;
    let decayed = if decay_rate == 0.0 { param } else { B::float_mul_scalar(param, (1.0 - decay_rate).into()) };
    (B::float_sub(decayed, B::float_mul_scalar(delta, step.lr.into())), m1, m2)
}

/// burn's `Sgd::step`, operation by operation.
fn burn_sgd_step<B: Backend>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    velocity: Option<FloatTensor<B>>,
    step: SgdStep,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let mut grad = match step.weight_decay {
        Some(penalty) => B::float_add(B::float_mul_scalar(param.clone(), penalty.into()), grad),
        None => grad,
    };
    let mut velocity_out = None;
    if let Some((momentum, dampening, nesterov)) = step.momentum {
        let velocity = match velocity {
            Some(previous) => B::float_add(
                B::float_mul_scalar(grad.clone(), (1.0 - dampening).into()),
                B::float_mul_scalar(previous, momentum.into()),
            ),
            None => grad.clone(),
        };
        grad = if nesterov {
            B::float_add(B::float_mul_scalar(velocity.clone(), momentum.into()), grad)
        } else {
            velocity.clone()
        };
        velocity_out = Some(velocity);
    }
    (B::float_sub(param, B::float_mul_scalar(grad, step.lr.into())), velocity_out)
}

fn burn_conv2d<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>, options: ConvOptions<2>) -> FloatTensor<B> {
    B::conv2d(x, weight, None, options)
}

fn burn_dense_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    out_grad: FloatTensor<B>,
    options: ConvOptions<2>,
    want_x: bool,
    want_weight: bool,
) -> (Option<FloatTensor<B>>, Option<FloatTensor<B>>) {
    let x_grad = want_x.then(|| B::conv2d_x_backward(x.clone(), weight.clone(), out_grad.clone(), options.clone()));
    let weight_grad = want_weight.then(|| B::conv2d_weight_backward(x, weight, out_grad, options));
    (x_grad, weight_grad)
}

fn burn_conv2d_scale_shift<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    scale: FloatTensor<B>,
    shift: FloatTensor<B>,
    options: ConvOptions<2>,
    activation: EpilogueActivation,
    residual: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let y = B::conv2d(x, weight, None, options);
    let per_channel = |t: FloatTensor<B>| {
        let channels = t.shape().num_elements();
        B::float_reshape(t, Shape::new([1, channels, 1, 1]))
    };
    let y = B::float_add(B::float_mul(y, per_channel(scale)), per_channel(shift));
    let y = match residual {
        Some(residual) => B::float_add(y, residual),
        None => y,
    };
    match activation {
        EpilogueActivation::Identity => y,
        EpilogueActivation::Relu { cap } => burn_clamped_relu::<B>(y, cap),
        EpilogueActivation::Silu => burn_silu::<B>(y),
    }
}

fn burn_pool_max2d<B: Backend>(
    x: FloatTensor<B>,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> FloatTensor<B> {
    B::max_pool2d(x, kernel, stride, padding, [1, 1], false)
}

fn burn_pool_max2d_backward<B: Backend>(
    x: FloatTensor<B>,
    _output: FloatTensor<B>,
    out_grad: FloatTensor<B>,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> FloatTensor<B> {
    let indices = B::max_pool2d_with_indices(x.clone(), kernel, stride, padding, [1, 1], false, IntDType::I64).indices;
    B::max_pool2d_with_indices_backward(x, kernel, stride, padding, [1, 1], false, out_grad, indices).x_grad
}

fn burn_batch_norm_training<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    epsilon: f64,
    relu_cap: Option<f32>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let result = B::batch_norm_train(x, gamma, beta, epsilon);
    let output = match relu_cap {
        Some(cap) => burn_clamped_relu::<B>(result.output, cap),
        None => result.output,
    };
    (output, result.mean, result.variance)
}

#[allow(clippy::too_many_arguments)]
fn burn_batch_norm_training_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    mean: FloatTensor<B>,
    variance: FloatTensor<B>,
    epsilon: f64,
    out_grad: FloatTensor<B>,
    relu_cap: Option<f32>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    // With an activation: its gradient first, from the output recomputed with these statistics.
    let out_grad = match relu_cap {
        Some(cap) => {
            let channels = mean.shape().num_elements();
            let per_channel = |t: FloatTensor<B>| B::float_reshape(t, Shape::new([1, channels, 1, 1]));
            let std = B::float_sqrt(B::float_add_scalar(variance.clone(), epsilon.into()));
            let scale = per_channel(B::float_div(gamma.clone(), std));
            let centred = B::float_sub(x.clone(), per_channel(mean.clone()));
            let y = B::float_add(B::float_mul(centred, scale), per_channel(beta));
            burn_clamped_relu_backward::<B>(burn_clamped_relu::<B>(y, cap), out_grad, cap)
        }
        None => out_grad,
    };
    let result = B::batch_norm_train_backward(x, gamma, mean, variance, epsilon, out_grad);
    (result.x_grad, result.gamma_grad, result.beta_grad)
}

/// The batch norm, the sum and the activation one after the other, each by the backend's own
/// operation.
fn unfused_batch_norm_residual_training<B: DeepKernels>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    residual: FloatTensor<B>,
    epsilon: f64,
    relu_cap: Option<f32>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (normalized, mean, variance) = B::batch_norm_training(x, gamma, beta, epsilon, None);
    let sum = B::float_add(normalized, residual);
    let output = match relu_cap {
        Some(cap) => B::clamped_relu(sum, cap),
        None => sum,
    };
    (output, mean, variance)
}

fn burn_clamped_relu<B: Backend>(x: FloatTensor<B>, cap: f32) -> FloatTensor<B> {
    let y = B::relu(x);
    if cap.is_finite() { B::float_clamp_max(y, cap.into()) } else { y }
}

fn burn_clamped_relu_backward<B: Backend>(output: FloatTensor<B>, grad: FloatTensor<B>, cap: f32) -> FloatTensor<B> {
    let grad = B::relu_backward(output.clone(), grad);
    if !cap.is_finite() {
        return grad;
    }
    // cap − output ≤ 0 exactly where the output was clamped from above.
    let headroom = B::float_neg(B::float_sub_scalar(output, cap.into()));
    B::relu_backward(headroom, grad)
}

fn burn_silu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    B::float_mul(x.clone(), B::sigmoid(x))
}

fn burn_silu_backward<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let s = B::sigmoid(x.clone());
    let one_minus_s = B::float_add_scalar(B::float_neg(s.clone()), 1f32.into());
    let slope = B::float_mul(s, B::float_add_scalar(B::float_mul(x, one_minus_s), 1f32.into()));
    B::float_mul(grad, slope)
}

fn burn_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    out_grad: FloatTensor<B>,
    options: ConvOptions<2>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let x_grad = B::conv2d_x_backward(x.clone(), weight.clone(), out_grad.clone(), options.clone());
    let weight_grad = B::conv2d_weight_backward(x, weight, out_grad, options);
    (x_grad, weight_grad)
}

/// Elements per parallel task of the element-wise kernels: large enough that scheduling is
/// noise, small enough that two cores share a layer's activations.
const ELEMENTWISE_CHUNK: usize = 1 << 15;

/// flex: our kernels for convolutions (dense and depthwise, forward and backward), batch norm and
/// pooling; activations in one pass each way (burn composes them from comparisons and masked
/// fills, three to four passes over the activations).
impl DeepKernels for Flex {
    fn depthwise_conv2d(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        let Some(geometry) = depthwise_geometry(&x, &weight, None, &options) else {
            return burn_conv2d::<Flex>(x, weight, options);
        };
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let y = depthwise::forward(&geometry, f32s(&x), f32s(&weight), None);
        let shape = [geometry.batch, geometry.out_channels, geometry.out_h, geometry.out_w];
        FlexTensor::from_data(TensorData::new(y, Shape::new(shape)))
    }

    fn pool_max2d(x: FlexTensor, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> FlexTensor {
        let Some(geometry) = pool_geometry(&x, kernel, stride, padding) else {
            return burn_pool_max2d::<Flex>(x, kernel, stride, padding);
        };
        let [batch, channels, _, _] = x.shape().dims();
        let x = x.to_contiguous();
        let y = maxpool::forward(&geometry, f32s(&x));
        FlexTensor::from_data(TensorData::new(y, Shape::new([batch, channels, geometry.out_h, geometry.out_w])))
    }

    fn pool_max2d_backward(
        x: FlexTensor,
        output: FlexTensor,
        out_grad: FlexTensor,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FlexTensor {
        let geometry = pool_geometry(&x, kernel, stride, padding)
            .filter(|_| output.dtype() == DType::F32 && out_grad.dtype() == DType::F32);
        let Some(geometry) = geometry else {
            return burn_pool_max2d_backward::<Flex>(x, output, out_grad, kernel, stride, padding);
        };
        let shape = x.shape();
        let [x, output, out_grad] = [x, output, out_grad].map(|t| t.to_contiguous());
        let grad = maxpool::backward(&geometry, f32s(&x), f32s(&output), f32s(&out_grad));
        FlexTensor::from_data(TensorData::new(grad, shape))
    }

    fn conv2d_scale_shift(
        x: FlexTensor,
        weight: FlexTensor,
        scale: FlexTensor,
        shift: FlexTensor,
        options: ConvOptions<2>,
        activation: EpilogueActivation,
    ) -> FlexTensor {
        flex_conv2d_scale_shift(x, weight, scale, shift, options, activation, None)
    }

    fn conv2d_scale_shift_residual(
        x: FlexTensor,
        weight: FlexTensor,
        scale: FlexTensor,
        shift: FlexTensor,
        options: ConvOptions<2>,
        activation: EpilogueActivation,
        residual: FlexTensor,
    ) -> FlexTensor {
        flex_conv2d_scale_shift(x, weight, scale, shift, options, activation, Some(residual))
    }

    fn batch_norm_training(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
        relu_cap: Option<f32>,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let Some(geometry) = norm_geometry(&[&x, &gamma, &beta]) else {
            return burn_batch_norm_training::<Flex>(x, gamma, beta, epsilon, relu_cap);
        };
        let shape = x.shape();
        let (x, gamma, beta) = (x.to_contiguous(), gamma.to_contiguous(), beta.to_contiguous());
        let result = batchnorm::forward(&geometry, f32s(&x), f32s(&gamma), f32s(&beta), epsilon, relu_cap);
        let per_channel =
            |values: Vec<f32>| FlexTensor::from_data(TensorData::new(values, Shape::new([geometry.channels])));
        (
            FlexTensor::from_data(TensorData::new(result.output, shape)),
            per_channel(result.mean),
            per_channel(result.variance),
        )
    }

    fn batch_norm_residual_training(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        residual: FlexTensor,
        epsilon: f64,
        relu_cap: Option<f32>,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let geometry = norm_geometry(&[&x, &gamma, &beta])
            .filter(|_| residual.dtype() == DType::F32 && residual.shape() == x.shape());
        let Some(geometry) = geometry else {
            return unfused_batch_norm_residual_training::<Flex>(x, gamma, beta, residual, epsilon, relu_cap);
        };
        let shape = x.shape();
        let [x, gamma, beta, residual] = [x, gamma, beta, residual].map(|t| t.to_contiguous());
        let result = batchnorm::forward_with_residual(
            &geometry,
            f32s(&x),
            f32s(&residual),
            f32s(&gamma),
            f32s(&beta),
            epsilon,
            relu_cap,
        );
        let per_channel =
            |values: Vec<f32>| FlexTensor::from_data(TensorData::new(values, Shape::new([geometry.channels])));
        (
            FlexTensor::from_data(TensorData::new(result.output, shape)),
            per_channel(result.mean),
            per_channel(result.variance),
        )
    }

    fn batch_norm_training_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
        out_grad: FlexTensor,
        relu_cap: Option<f32>,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let Some(geometry) = norm_geometry(&[&x, &gamma, &beta, &mean, &variance, &out_grad]) else {
            return burn_batch_norm_training_backward::<Flex>(
                x, gamma, beta, mean, variance, epsilon, out_grad, relu_cap,
            );
        };
        let shape = x.shape();
        let [x, gamma, beta, mean, variance, out_grad] =
            [x, gamma, beta, mean, variance, out_grad].map(|t| t.to_contiguous());
        let result = batchnorm::backward(
            &geometry,
            f32s(&x),
            f32s(&gamma),
            f32s(&beta),
            f32s(&mean),
            f32s(&variance),
            epsilon,
            f32s(&out_grad),
            relu_cap,
        );
        let per_channel =
            |values: Vec<f32>| FlexTensor::from_data(TensorData::new(values, Shape::new([geometry.channels])));
        (
            FlexTensor::from_data(TensorData::new(result.x_grad, shape)),
            per_channel(result.gamma_grad),
            per_channel(result.beta_grad),
        )
    }

    fn dense_conv2d(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        let Some(geometry) = dense_geometry(&x, &weight, None, &options) else {
            return burn_conv2d::<Flex>(x, weight, options);
        };
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let y = conv::forward(&geometry, f32s(&x), f32s(&weight));
        let shape = [geometry.batch, geometry.out_channels, geometry.out_h, geometry.out_w];
        FlexTensor::from_data(TensorData::new(y, Shape::new(shape)))
    }

    fn dense_conv2d_backward(
        x: FlexTensor,
        weight: FlexTensor,
        out_grad: FlexTensor,
        options: ConvOptions<2>,
        want_x: bool,
        want_weight: bool,
    ) -> (Option<FlexTensor>, Option<FlexTensor>) {
        let Some(geometry) = dense_geometry(&x, &weight, Some(&out_grad), &options) else {
            return burn_dense_backward::<Flex>(x, weight, out_grad, options, want_x, want_weight);
        };
        let (x_shape, weight_shape) = (x.shape(), weight.shape());
        let (x, weight, out_grad) = (x.to_contiguous(), weight.to_contiguous(), out_grad.to_contiguous());
        let (x_grad, weight_grad) =
            conv::backward(&geometry, f32s(&x), f32s(&weight), f32s(&out_grad), want_x, want_weight);
        (
            x_grad.map(|grad| FlexTensor::from_data(TensorData::new(grad, x_shape))),
            weight_grad.map(|grad| FlexTensor::from_data(TensorData::new(grad, weight_shape))),
        )
    }

    fn clamped_relu(x: FlexTensor, cap: f32) -> FlexTensor {
        if x.dtype() != DType::F32 {
            return burn_clamped_relu::<Flex>(x, cap);
        }
        // Selects, not f32::max/min, so it vectorises; a NaN passes through as in PyTorch.
        map_f32(
            &x,
            #[inline(always)]
            move |v| {
                let v = if v < 0.0 { 0.0 } else { v };
                if v > cap { cap } else { v }
            },
        )
    }

    fn clamped_relu_backward(output: FlexTensor, grad: FlexTensor, cap: f32) -> FlexTensor {
        if output.dtype() != DType::F32 || grad.dtype() != DType::F32 || output.shape() != grad.shape() {
            return burn_clamped_relu_backward::<Flex>(output, grad, cap);
        }
        zip_map_f32(
            &grad,
            &output,
            #[inline(always)]
            move |g, y| if (y > 0.0) & (y < cap) { g } else { 0.0 },
        )
    }

    fn silu(x: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 {
            return burn_silu::<Flex>(x);
        }
        map_f32(&x, crate::conv::silu)
    }

    fn silu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 || x.shape() != grad.shape() {
            return burn_silu_backward::<Flex>(x, grad);
        }
        zip_map_f32(
            &grad,
            &x,
            #[inline(always)]
            |g, v| {
                // (`simd::exp` measured 30 % slower here while this closure was not inlined into
                // the dispatcher, i.e. compiled for SSE2; inlined, it vectorises.)
                let s = 1.0 / (1.0 + crate::simd::exp(-v));
                g * s * (1.0 + v * (1.0 - s))
            },
        )
    }

    fn depthwise_conv2d_backward(
        x: FlexTensor,
        weight: FlexTensor,
        out_grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> (FlexTensor, FlexTensor) {
        let Some(geometry) = depthwise_geometry(&x, &weight, Some(&out_grad), &options) else {
            return burn_backward::<Flex>(x, weight, out_grad, options);
        };
        let (x_shape, weight_shape) = (x.shape(), weight.shape());
        let (x, weight, out_grad) = (x.to_contiguous(), weight.to_contiguous(), out_grad.to_contiguous());
        let (x_values, weight_values, grad_values) = (f32s(&x), f32s(&weight), f32s(&out_grad));
        let (x_grad, weight_grad) = rayon::join(
            || depthwise::input_grad(&geometry, weight_values, grad_values),
            || depthwise::weight_grad(&geometry, x_values, grad_values),
        );
        (
            FlexTensor::from_data(TensorData::new(x_grad, x_shape)),
            FlexTensor::from_data(TensorData::new(weight_grad, weight_shape)),
        )
    }

    fn adamw_step(
        param: FlexTensor,
        grad: FlexTensor,
        moment_1: FlexTensor,
        moment_2: FlexTensor,
        step: AdamWStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        if !same_f32_shape(&param, [&grad, &moment_1, &moment_2]) {
            let moments = (step.time > 1).then_some((moment_1, moment_2));
            return burn_adamw_step::<Flex>(param, grad, moments, step);
        }
        let (mut param, mut m1, mut m2) = (param, moment_1, moment_2);
        let grad = grad.to_contiguous();
        optim::adamw(owned_f32s(&mut param), f32s(&grad), owned_f32s(&mut m1), owned_f32s(&mut m2), &step);
        (param, m1, m2)
    }

    fn lamb_step(
        param: FlexTensor,
        grad: FlexTensor,
        moment_1: FlexTensor,
        moment_2: FlexTensor,
        step: LambStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        if !same_f32_shape(&param, [&grad, &moment_1, &moment_2]) {
            let moments = (step.time > 1).then_some((moment_1, moment_2));
            return burn_lamb_step::<Flex>(param, grad, moments, step);
        }
        let (mut param, mut m1, mut m2) = (param, moment_1, moment_2);
        let grad = grad.to_contiguous();
        optim::lamb(owned_f32s(&mut param), f32s(&grad), owned_f32s(&mut m1), owned_f32s(&mut m2), &step);
        (param, m1, m2)
    }

    fn sgd_step(
        param: FlexTensor,
        grad: FlexTensor,
        velocity: FlexTensor,
        step: SgdStep,
        first: bool,
    ) -> (FlexTensor, FlexTensor) {
        let uses_velocity = step.momentum.is_some();
        let checked: &[&FlexTensor] = if uses_velocity { &[&grad, &velocity] } else { &[&grad] };
        if !same_f32_shape(&param, checked.iter().copied()) {
            let previous = (!first && uses_velocity).then(|| velocity.clone());
            let (param, updated) = burn_sgd_step::<Flex>(param, grad, previous, step);
            return (param, updated.unwrap_or(velocity));
        }
        let (mut param, mut velocity) = (param, velocity);
        let grad = grad.to_contiguous();
        let buffer = if uses_velocity { Some(owned_f32s(&mut velocity)) } else { None };
        optim::sgd(owned_f32s(&mut param), f32s(&grad), buffer, first, &step);
        (param, velocity)
    }
}

/// Whether `param` and `others` are all f32 tensors of one shape (what the fused optimizer
/// steps take; anything else goes to burn's operations).
fn same_f32_shape<'a>(param: &FlexTensor, others: impl IntoIterator<Item = &'a FlexTensor>) -> bool {
    let shape = param.shape();
    param.dtype() == DType::F32 && others.into_iter().all(|t| t.dtype() == DType::F32 && t.shape() == shape)
}

/// A tensor's f32 values to update in place: its own contiguous buffer, copied first if the
/// buffer is shared with another tensor, strided or offset.
fn owned_f32s(tensor: &mut FlexTensor) -> &mut [f32] {
    if !matches!(tensor.layout().contiguous_offsets(), Some((0, _))) {
        *tensor = tensor.to_contiguous();
    }
    let len = tensor.shape().num_elements();
    // `storage_mut` copies a shared buffer (copy on write), so other holders never see the update.
    &mut tensor.storage_mut::<f32>()[..len]
}

/// The geometry of a max pooling our kernel computes (f32, rank 4, padding below the kernel
/// size), or `None` for burn's.
fn pool_geometry(x: &FlexTensor, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Option<PoolGeometry> {
    if x.dtype() != DType::F32 || x.shape().num_dims() != 4 || (0..2).any(|a| padding[a] >= kernel[a] || stride[a] == 0)
    {
        return None;
    }
    let [batch, channels, in_h, in_w] = x.shape().dims();
    let out = |a: usize, len: usize| (len + 2 * padding[a]).checked_sub(kernel[a]).map(|room| room / stride[a] + 1);
    Some(PoolGeometry {
        planes: batch * channels,
        in_h,
        in_w,
        out_h: out(0, in_h)?,
        out_w: out(1, in_w)?,
        kernel,
        stride,
        padding,
    })
}

/// `[batch, channels, plane]` of a batch norm whose tensors (the input first, then per-channel
/// ones, then optionally the output gradient) are all f32 and of matching sizes; `None` for burn's.
fn norm_geometry(tensors: &[&FlexTensor]) -> Option<NormGeometry> {
    if tensors.iter().any(|t| t.dtype() != DType::F32) || tensors[0].shape().num_dims() != 4 {
        return None;
    }
    let dims: [usize; 4] = tensors[0].shape().dims();
    let channels = dims[1];
    let geometry = NormGeometry { batch: dims[0], channels, plane: dims[2] * dims[3] };
    let sizes_match = tensors[1..].iter().all(|t| {
        let n = t.shape().num_elements();
        n == channels || t.shape() == tensors[0].shape()
    });
    sizes_match.then_some(geometry)
}

/// The geometry of a convolution our dense kernels compute (f32, `groups` = 1), or `None` for
/// burn's. Without `out_grad` the output size follows from the options.
fn dense_geometry(
    x: &FlexTensor,
    weight: &FlexTensor,
    out_grad: Option<&FlexTensor>,
    options: &ConvOptions<2>,
) -> Option<ConvGeometry> {
    let all_f32 = [Some(x), Some(weight), out_grad].into_iter().flatten().all(|t| t.dtype() == DType::F32);
    if !all_f32 || options.groups != 1 {
        return None;
    }
    let weight_in = weight.shape().dims::<4>()[1];
    if weight_in != x.shape().dims::<4>()[1] {
        return None;
    }
    conv_geometry(x, weight, out_grad, options)
}

/// The shape of a depthwise convolution ([`is_depthwise`]) of f32 tensors, `None` for others.
fn depthwise_geometry(
    x: &FlexTensor,
    weight: &FlexTensor,
    out_grad: Option<&FlexTensor>,
    options: &ConvOptions<2>,
) -> Option<ConvGeometry> {
    let all_f32 = [Some(x), Some(weight), out_grad].into_iter().flatten().all(|t| t.dtype() == DType::F32);
    let depthwise = is_depthwise(x.shape().dims::<4>()[1], weight.shape().dims(), options.groups);
    if !all_f32 || !depthwise {
        return None;
    }
    conv_geometry(x, weight, out_grad, options)
}

/// The shape of a convolution of `x` (`[batch, in, h, w]`) by `weight` (`[out, in/groups, kh,
/// kw]`): the output size from `out_grad` or, without it, from the options (`None` if the kernel
/// does not fit).
fn conv_geometry(
    x: &FlexTensor,
    weight: &FlexTensor,
    out_grad: Option<&FlexTensor>,
    options: &ConvOptions<2>,
) -> Option<ConvGeometry> {
    let [batch, in_channels, in_h, in_w] = x.shape().dims();
    let [out_channels, _, kh, kw] = weight.shape().dims();
    let out_len = |axis: usize, len: usize, kernel: usize| {
        let (begin, end) = options.padding[axis];
        let span = options.dilation[axis] * (kernel - 1) + 1;
        (len + begin + end).checked_sub(span).map(|room| room / options.stride[axis] + 1)
    };
    let (out_h, out_w) = match out_grad {
        Some(grad) => {
            let [_, _, out_h, out_w] = grad.shape().dims();
            (out_h, out_w)
        }
        None => (out_len(0, in_h, kh)?, out_len(1, in_w, kw)?),
    };
    Some(ConvGeometry {
        batch,
        in_channels,
        out_channels,
        in_h,
        in_w,
        out_h,
        out_w,
        kernel: [kh, kw],
        stride: options.stride,
        padding: [options.padding[0].0, options.padding[1].0],
        dilation: options.dilation,
    })
}

/// flex's [`DeepKernels::conv2d_scale_shift`] and its residual variant: our dense and depthwise
/// kernels with the epilogue inside (no residual for depthwise), burn's otherwise.
#[allow(clippy::too_many_arguments)]
fn flex_conv2d_scale_shift(
    x: FlexTensor,
    weight: FlexTensor,
    scale: FlexTensor,
    shift: FlexTensor,
    options: ConvOptions<2>,
    activation: EpilogueActivation,
    residual: Option<FlexTensor>,
) -> FlexTensor {
    let out_channels = weight.shape().dims::<4>()[0];
    let per_channel_f32 =
        [&scale, &shift].iter().all(|t| t.dtype() == DType::F32 && t.shape().num_elements() == out_channels);
    let dense = dense_geometry(&x, &weight, None, &options);
    // A residual only where it has the output's shape, for the dense kernel.
    let residual_fits = match (&residual, &dense) {
        (None, _) => true,
        (Some(r), Some(g)) => {
            r.dtype() == DType::F32 && r.shape().dims::<4>() == [g.batch, g.out_channels, g.out_h, g.out_w]
        }
        (Some(_), None) => false,
    };
    if !per_channel_f32 || x.dtype() != DType::F32 || !residual_fits {
        return burn_conv2d_scale_shift::<Flex>(x, weight, scale, shift, options, activation, residual);
    }
    let (scale, shift) = (scale.to_contiguous(), shift.to_contiguous());
    let residual = residual.map(|r| r.to_contiguous());
    let epilogue =
        Epilogue { scale: f32s(&scale), shift: f32s(&shift), activation, residual: residual.as_ref().map(f32s) };
    if let Some(geometry) = dense {
        // Inference: the weights' own storage (not a contiguous copy made for this call) is
        // their owner, so what is prepared from them is kept for the next call.
        let owner = weight.is_contiguous().then(|| WeightsOwner::new(weight.data_arc(), weight.bytes()));
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let y = conv::forward_prepared(&geometry, f32s(&x), f32s(&weight), Some(&epilogue), owner.as_ref());
        let shape = [geometry.batch, geometry.out_channels, geometry.out_h, geometry.out_w];
        return FlexTensor::from_data(TensorData::new(y, Shape::new(shape)));
    }
    if let Some(geometry) = depthwise_geometry(&x, &weight, None, &options) {
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let y = depthwise::forward(&geometry, f32s(&x), f32s(&weight), Some(&epilogue));
        let shape = [geometry.batch, geometry.out_channels, geometry.out_h, geometry.out_w];
        return FlexTensor::from_data(TensorData::new(y, Shape::new(shape)));
    }
    // Other convolutions (grouped) are burn's, the epilogue one pass over their output.
    let y = burn_conv2d::<Flex>(x, weight, options).to_contiguous();
    let shape = y.shape();
    let [_, channels, h, w] = shape.dims();
    let mut values = f32s(&y).to_vec();
    epilogue.apply_all(&mut values, h * w, channels);
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// `f` of every element of an f32 tensor, in one parallel pass, as a new contiguous tensor.
fn map_f32(x: &FlexTensor, f: impl Fn(f32) -> f32 + Sync) -> FlexTensor {
    let x = x.to_contiguous();
    let input = f32s(&x);
    let out = par_filled(input.len(), ELEMENTWISE_CHUNK, |offset, out| {
        crate::simd::widest(
            #[inline(always)]
            || {
                for (o, &v) in out.iter_mut().zip(&input[offset..]) {
                    o.write(f(v));
                }
            },
        )
    });
    FlexTensor::from_data(TensorData::new(out, x.shape()))
}

/// `f(a, b)` of the elements of two f32 tensors of the same shape, in one parallel pass.
fn zip_map_f32(a: &FlexTensor, b: &FlexTensor, f: impl Fn(f32, f32) -> f32 + Sync) -> FlexTensor {
    let (a, b) = (a.to_contiguous(), b.to_contiguous());
    let (left, right) = (f32s(&a), f32s(&b));
    let out = par_filled(left.len(), ELEMENTWISE_CHUNK, |offset, out| {
        crate::simd::widest(
            #[inline(always)]
            || {
                for ((o, &l), &r) in out.iter_mut().zip(&left[offset..]).zip(&right[offset..]) {
                    o.write(f(l, r));
                }
            },
        )
    });
    FlexTensor::from_data(TensorData::new(out, a.shape()))
}

fn f32s(tensor: &FlexTensor) -> &[f32] {
    tensor.as_slice::<f32>().expect("a contiguous f32 tensor")
}

/// CUDA: burn's operations throughout (the trait's defaults).
#[cfg(feature = "cuda")]
impl DeepKernels for burn::backend::Cube {}

#[derive(Debug)]
struct DepthwiseBackward;

#[derive(Debug, Clone)]
struct ConvState<B: Backend> {
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    options: ConvOptions<2>,
}

impl<B: DeepKernels> Backward<B, 2> for DepthwiseBackward {
    type State = ConvState<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let ConvState { x, weight, options } = ops.state;
        let (x_grad, weight_grad) = B::depthwise_conv2d_backward(x, weight, grad, options);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, x_grad);
        }
        if let Some(node) = node_weight {
            grads.register::<B>(node.id, weight_grad);
        }
    }
}

#[derive(Debug)]
struct DenseConvBackward;

impl<B: DeepKernels> Backward<B, 2> for DenseConvBackward {
    type State = ConvState<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let ConvState { x, weight, options } = ops.state;
        let (x_grad, weight_grad) =
            B::dense_conv2d_backward(x, weight, grad, options, node_x.is_some(), node_weight.is_some());
        if let (Some(node), Some(grad)) = (node_x, x_grad) {
            grads.register::<B>(node.id, grad);
        }
        if let (Some(node), Some(grad)) = (node_weight, weight_grad) {
            grads.register::<B>(node.id, grad);
        }
    }
}

#[derive(Debug)]
struct BatchNormBackward;

#[derive(Debug, Clone)]
struct BatchNormState<B: Backend> {
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    mean: FloatTensor<B>,
    variance: FloatTensor<B>,
    epsilon: f64,
    relu_cap: Option<f32>,
}

impl<B: Backend> BatchNormState<B> {
    /// The inputs `[x, gamma, beta]`, the statistics the forward computed, and its settings.
    fn new(
        [x, gamma, beta]: [FloatTensor<B>; 3],
        mean: &FloatTensor<B>,
        variance: &FloatTensor<B>,
        epsilon: f64,
        relu_cap: Option<f32>,
    ) -> Self {
        BatchNormState { x, gamma, beta, mean: mean.clone(), variance: variance.clone(), epsilon, relu_cap }
    }
}

impl<B: DeepKernels> Backward<B, 3> for BatchNormBackward {
    type State = BatchNormState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let BatchNormState { x, gamma, beta, mean, variance, epsilon, relu_cap } = ops.state;
        let (x_grad, gamma_grad, beta_grad) =
            B::batch_norm_training_backward(x, gamma, beta, mean, variance, epsilon, grad, relu_cap);
        for (node, grad) in [(node_x, x_grad), (node_gamma, gamma_grad), (node_beta, beta_grad)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct BatchNormResidualBackward;

impl<B: DeepKernels> Backward<B, 4> for BatchNormResidualBackward {
    /// The batch norm's state, and the output (the clamp's gradient needs only it).
    type State = (BatchNormState<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta, node_residual] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (BatchNormState { x, gamma, beta, mean, variance, epsilon, relu_cap }, output) = ops.state;
        // The gradient of the sum reaches the residual unchanged and the batch norm's output.
        let grad = match relu_cap {
            Some(cap) => B::clamped_relu_backward(output, grad, cap),
            None => grad,
        };
        if let Some(node) = node_residual {
            grads.register::<B>(node.id, grad.clone());
        }
        let (x_grad, gamma_grad, beta_grad) =
            B::batch_norm_training_backward(x, gamma, beta, mean, variance, epsilon, grad, None);
        for (node, grad) in [(node_x, x_grad), (node_gamma, gamma_grad), (node_beta, beta_grad)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct MaxPoolBackward;

impl<B: DeepKernels> Backward<B, 1> for MaxPoolBackward {
    /// The input, the output, and kernel, stride, padding.
    type State = (FloatTensor<B>, FloatTensor<B>, [[usize; 2]; 3]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, output, [kernel, stride, padding]) = ops.state;
        if let Some(node) = node {
            grads.register::<B>(node.id, B::pool_max2d_backward(x, output, grad, kernel, stride, padding));
        }
    }
}

#[derive(Debug)]
struct ClampedReluBackward;

impl<B: DeepKernels> Backward<B, 1> for ClampedReluBackward {
    /// The forward's output and the cap.
    type State = (FloatTensor<B>, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (output, cap) = ops.state;
        if let Some(node) = node {
            grads.register::<B>(node.id, B::clamped_relu_backward(output, grad, cap));
        }
    }
}

#[derive(Debug)]
struct SiluBackward;

impl<B: DeepKernels> Backward<B, 1> for SiluBackward {
    /// The forward's input.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node {
            grads.register::<B>(node.id, B::silu_backward(ops.state, grad));
        }
    }
}

/// Autodiff: the inner backend's forwards, and backward nodes that ask the inner backend for the
/// gradients.
impl<B: DeepKernels, C: CheckpointStrategy> DeepKernels for Autodiff<B, C> {
    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match SiluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let input = x.into_primitive();
                let output = B::silu(input.clone());
                prep.finish(input, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::silu(x.into_primitive())),
        }
    }

    fn clamped_relu(x: FloatTensor<Self>, cap: f32) -> FloatTensor<Self> {
        match ClampedReluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = B::clamped_relu(x.into_primitive(), cap);
                prep.finish((output.clone(), cap), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::clamped_relu(x.into_primitive(), cap)),
        }
    }

    fn pool_max2d(
        x: FloatTensor<Self>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        match MaxPoolBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let input = x.into_primitive();
                let output = B::pool_max2d(input.clone(), kernel, stride, padding);
                prep.finish((input, output.clone(), [kernel, stride, padding]), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::pool_max2d(x.into_primitive(), kernel, stride, padding)),
        }
    }

    fn batch_norm_training(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu_cap: Option<f32>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // The statistics leave the graph: they only feed the running averages.
        match BatchNormBackward.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (output, mean, variance) = B::batch_norm_training(
                    x.primitive().clone(),
                    gamma.primitive().clone(),
                    beta.primitive().clone(),
                    epsilon,
                    relu_cap,
                );
                let state = BatchNormState::new(
                    [x, gamma, beta].map(|t| t.into_primitive()),
                    &mean,
                    &variance,
                    epsilon,
                    relu_cap,
                );
                (prep.finish(state, output), FloatTensor::<Self>::new(mean), FloatTensor::<Self>::new(variance))
            }
            OpsKind::UnTracked(prep) => {
                let (output, mean, variance) = B::batch_norm_training(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                    relu_cap,
                );
                (prep.finish(output), FloatTensor::<Self>::new(mean), FloatTensor::<Self>::new(variance))
            }
        }
    }

    fn batch_norm_residual_training(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
        relu_cap: Option<f32>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let parents = [x.node(), gamma.node(), beta.node(), residual.node()];
        match BatchNormResidualBackward.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (output, mean, variance) = B::batch_norm_residual_training(
                    x.primitive().clone(),
                    gamma.primitive().clone(),
                    beta.primitive().clone(),
                    residual.into_primitive(),
                    epsilon,
                    relu_cap,
                );
                let state = BatchNormState::new(
                    [x, gamma, beta].map(|t| t.into_primitive()),
                    &mean,
                    &variance,
                    epsilon,
                    relu_cap,
                );
                let output = prep.finish((state, output.clone()), output);
                (output, FloatTensor::<Self>::new(mean), FloatTensor::<Self>::new(variance))
            }
            OpsKind::UnTracked(prep) => {
                let (output, mean, variance) = B::batch_norm_residual_training(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    residual.into_primitive(),
                    epsilon,
                    relu_cap,
                );
                (prep.finish(output), FloatTensor::<Self>::new(mean), FloatTensor::<Self>::new(variance))
            }
        }
    }

    fn dense_conv2d(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        match DenseConvBackward.prepare::<C>([x.node(), weight.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = B::dense_conv2d(x.primitive().clone(), weight.primitive().clone(), options.clone());
                prep.finish(ConvState { x: x.into_primitive(), weight: weight.into_primitive(), options }, output)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::dense_conv2d(x.into_primitive(), weight.into_primitive(), options))
            }
        }
    }

    fn depthwise_conv2d(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        match DepthwiseBackward.prepare::<C>([x.node(), weight.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = B::depthwise_conv2d(x.primitive().clone(), weight.primitive().clone(), options.clone());
                prep.finish(ConvState { x: x.into_primitive(), weight: weight.into_primitive(), options }, output)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::depthwise_conv2d(x.into_primitive(), weight.into_primitive(), options))
            }
        }
    }
}

/// Whether a convolution of these shapes is one [`depthwise_conv2d`] computes: one filter per
/// channel (`weight` `[channels, 1, kh, kw]` on `channels` input channels, `groups` == channels).
pub fn is_depthwise(x_channels: usize, weight_dims: [usize; 4], groups: usize) -> bool {
    groups > 1 && groups == x_channels && weight_dims[0] == x_channels && weight_dims[1] == 1
}

/// SiLU, `x · sigmoid(x)`, on whatever device the tensor is.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as DeepKernels>::silu(x.into_dispatch()))
}

/// ReLU on whatever device the tensor is.
pub fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as DeepKernels>::clamped_relu(x.into_dispatch(), f32::INFINITY))
}

/// ReLU6, `min(max(x, 0), 6)`, on whatever device the tensor is.
pub fn relu6<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as DeepKernels>::clamped_relu(x.into_dispatch(), 6.0))
}

/// 2-D max pooling (no dilation, floor mode) on whatever device the tensor is.
pub fn max_pool2d(x: Tensor<4>, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as DeepKernels>::pool_max2d(x.into_dispatch(), kernel, stride, padding))
}

/// Inference through a convolution (no bias) and what follows it: `conv(x, weight)·scale[c] +
/// shift[c]` (+ `residual`, shaped as the output), then `activation`. On flex the scale, shift,
/// residual and activation are applied to each chunk of output while it is in cache.
pub fn conv2d_scale_shift(
    x: Tensor<4>,
    weight: Tensor<4>,
    scale: Tensor<1>,
    shift: Tensor<1>,
    options: ConvOptions<2>,
    activation: EpilogueActivation,
    residual: Option<Tensor<4>>,
) -> Tensor<4> {
    let (x, weight, scale, shift) =
        (x.into_dispatch(), weight.into_dispatch(), scale.into_dispatch(), shift.into_dispatch());
    Tensor::from_dispatch(match residual {
        Some(residual) => <Dispatch as DeepKernels>::conv2d_scale_shift_residual(
            x,
            weight,
            scale,
            shift,
            options,
            activation,
            residual.into_dispatch(),
        ),
        None => <Dispatch as DeepKernels>::conv2d_scale_shift(x, weight, scale, shift, options, activation),
    })
}

/// Training-mode batch normalisation of `[batch, channels, height, width]` on whatever device
/// the tensors are, then ReLU capped at `relu_cap` if there is one (∞: ReLU, 6: ReLU6) in the
/// same passes: the output, and the batch mean and biased variance per channel (outside the
/// autodiff graph).
pub fn batch_norm_training(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    relu_cap: Option<f32>,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    let (output, mean, variance) = <Dispatch as DeepKernels>::batch_norm_training(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
        relu_cap,
    );
    (Tensor::from_dispatch(output), Tensor::from_dispatch(mean), Tensor::from_dispatch(variance))
}

/// [`batch_norm_training`] with `residual` (`x`'s shape) added before the activation: a residual
/// block's `relu(bn(x) + residual)` in the batch norm's passes. The statistics leave the graph.
pub fn batch_norm_residual_training(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    residual: Tensor<4>,
    epsilon: f64,
    relu_cap: Option<f32>,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    let (output, mean, variance) = <Dispatch as DeepKernels>::batch_norm_residual_training(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        residual.into_dispatch(),
        epsilon,
        relu_cap,
    );
    (Tensor::from_dispatch(output), Tensor::from_dispatch(mean), Tensor::from_dispatch(variance))
}

/// A dense convolution (`groups` = 1) without bias on whatever device the tensors are.
pub fn dense_conv2d(x: Tensor<4>, weight: Tensor<4>, options: ConvOptions<2>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as DeepKernels>::dense_conv2d(x.into_dispatch(), weight.into_dispatch(), options))
}

/// A depthwise convolution without bias on whatever device the tensors are (see [`is_depthwise`]).
pub fn depthwise_conv2d(x: Tensor<4>, weight: Tensor<4>, options: ConvOptions<2>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as DeepKernels>::depthwise_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        options,
    ))
}

/// One AdamW step of `param` on whatever device it is (see [`DeepKernels::adamw_step`]), from
/// the previous moments (`None` on the first step); on flex one parallel pass updating the
/// parameter and moments in place.
pub fn adamw_step<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moments: Option<(Tensor<D>, Tensor<D>)>,
    step: AdamWStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    two_moment_step(param, grad, moments, |p, g, m1, m2| <Dispatch as DeepKernels>::adamw_step(p, g, m1, m2, step))
}

/// One LAMB step of `param` on whatever device it is (see [`DeepKernels::lamb_step`]), from the
/// previous moments (`None` on the first step); on flex two parallel passes updating the
/// parameter and moments in place.
pub fn lamb_step<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moments: Option<(Tensor<D>, Tensor<D>)>,
    step: LambStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    two_moment_step(param, grad, moments, |p, g, m1, m2| <Dispatch as DeepKernels>::lamb_step(p, g, m1, m2, step))
}

/// The parameter and both moments through `kernel` (an optimizer step keeping two moments), with
/// uninitialised moment buffers on the first step: the kernels write them without reading them.
fn two_moment_step<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moments: Option<(Tensor<D>, Tensor<D>)>,
    kernel: impl FnOnce(
        FloatTensor<Dispatch>,
        FloatTensor<Dispatch>,
        FloatTensor<Dispatch>,
        FloatTensor<Dispatch>,
    ) -> (FloatTensor<Dispatch>, FloatTensor<Dispatch>, FloatTensor<Dispatch>),
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let (m1, m2) = moments.unwrap_or_else(|| {
        let buffer = || Tensor::empty(param.shape(), &param.device());
        (buffer(), buffer())
    });
    let (param, m1, m2) = kernel(param.into_dispatch(), grad.into_dispatch(), m1.into_dispatch(), m2.into_dispatch());
    (Tensor::from_dispatch(param), Tensor::from_dispatch(m1), Tensor::from_dispatch(m2))
}

/// One SGD step of `param` on whatever device it is (see [`DeepKernels::sgd_step`]), from the
/// previous momentum buffer (`None` on the first step); the buffer after it (`None` without
/// momentum).
pub fn sgd_step<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    velocity: Option<Tensor<D>>,
    step: SgdStep,
) -> (Tensor<D>, Option<Tensor<D>>) {
    let first = velocity.is_none();
    let buffer = match (step.momentum, velocity) {
        (Some(_), Some(velocity)) => velocity,
        // Written without being read.
        (Some(_), None) => Tensor::empty(param.shape(), &param.device()),
        // Not used: any tensor will do; the gradient costs nothing to share.
        (None, _) => grad.clone(),
    };
    let (param, velocity) = <Dispatch as DeepKernels>::sgd_step(
        param.into_dispatch(),
        grad.into_dispatch(),
        buffer.into_dispatch(),
        step,
        first,
    );
    (Tensor::from_dispatch(param), step.momentum.is_some().then(|| Tensor::from_dispatch(velocity)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flex(values: &[f32]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values.to_vec(), Shape::new([values.len()])))
    }

    fn host(tensor: &FlexTensor) -> Vec<f32> {
        f32s(&tensor.to_contiguous()).to_vec()
    }

    /// Odd length, values of both signs and a zero gradient.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32).map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    // The fused steps on flex against the trait's defaults (burn's operations, what CUDA runs),
    // step after step, so that both devices train alike.

    #[test]
    fn fused_adamw_is_the_default_step() {
        let n = 70_001;
        let (mut fused, mut reference) = ((flex(&values(n, 1)), None), (flex(&values(n, 1)), None));
        for time in 1..=3 {
            let step = AdamWStep {
                lr: 0.01 / time as f64,
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-8,
                weight_decay: 0.05,
                time,
            };
            let grad = values(n, time as u32 + 1);
            let (m1, m2) = fused.1.take().unwrap_or_else(|| (flex(&vec![f32::NAN; n]), flex(&vec![f32::NAN; n])));
            let (p, m1, m2) = <Flex as DeepKernels>::adamw_step(fused.0, flex(&grad), m1, m2, step);
            fused = (p, Some((m1, m2)));
            let (p, m1, m2) = burn_adamw_step::<Flex>(reference.0, flex(&grad), reference.1.take(), step);
            reference = (p, Some((m1, m2)));
            assert_eq!(host(&fused.0), host(&reference.0), "parameter after step {time}");
            let (a, b) = (fused.1.as_ref().unwrap(), reference.1.as_ref().unwrap());
            assert_eq!((host(&a.0), host(&a.1)), (host(&b.0), host(&b.1)), "moments after step {time}");
        }
    }

    #[test]
    fn fused_lamb_is_the_default_step() {
        let n = 70_001;
        let zeros = vec![0.0; n];
        // (initial parameter, weight decay, trust ratio): a zero parameter has a zero norm, so
        // its first step's trust ratio is 1.
        let cases = [(values(n, 1), 0.05, true), (values(n, 1), 0.0, false), (zeros.clone(), 0.0, true)];
        for (initial, weight_decay, use_trust_ratio) in cases {
            let (mut fused, mut reference) = ((flex(&initial), None), (flex(&initial), None));
            for time in 1..=3 {
                let step = LambStep {
                    lr: 0.01 / time as f64,
                    beta_1: 0.9,
                    beta_2: 0.999,
                    epsilon: 1e-6,
                    weight_decay,
                    use_trust_ratio,
                    time,
                };
                let grad = values(n, time as u32 + 1);
                let (m1, m2) = fused.1.take().unwrap_or_else(|| (flex(&vec![f32::NAN; n]), flex(&vec![f32::NAN; n])));
                let (p, m1, m2) = <Flex as DeepKernels>::lamb_step(fused.0, flex(&grad), m1, m2, step);
                fused = (p, Some((m1, m2)));
                let (p, m1, m2) = burn_lamb_step::<Flex>(reference.0, flex(&grad), reference.1.take(), step);
                reference = (p, Some((m1, m2)));
                let case = format!("decay {weight_decay}, trust ratio {use_trust_ratio}, step {time}");
                let (a, b) = (fused.1.as_ref().unwrap(), reference.1.as_ref().unwrap());
                assert_eq!((host(&a.0), host(&a.1)), (host(&b.0), host(&b.1)), "moments, {case}");
                let (ours, theirs) = (host(&fused.0), host(&reference.0));
                assert!(ours.iter().all(|v| v.is_finite()), "{case}");
                let worst =
                    ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0f32, f32::max);
                assert!(worst < 1e-6, "parameter, {case}: off by {worst}");
                assert_ne!(ours, host(&flex(&initial)), "the parameter moved, {case}");
            }
        }
    }

    /// Inference in bfloat16 keeps the filters it prepares from a model's weights for the next
    /// call (`crate::prepared`): each path that prepares them (chunks of images, one image in
    /// bands, one image cut by filters, Winograd) gives, call after call, exactly what preparing
    /// them afresh gives; weights replaced by others (a new model, or a training step) are
    /// computed with, never a stale preparation; and the replaced weights' entries are dropped.
    #[test]
    fn inference_keeps_prepared_filters_only_while_their_weights_live() {
        if !crate::bf16::supported() {
            eprintln!("skipped: this CPU has no AVX-512-BF16");
            return;
        }
        // (batch, [in, out] channels, input side, kernel, stride, padding)
        let cases = [
            // Chunks of several images (their `col(x)` read from the input as it is packed).
            (8, [80, 16], 7, 3, 2, 1),
            // One image in bands (32×32 outputs).
            (1, [8, 16], 64, 3, 2, 1),
            // One image cut by filters (7×7 outputs).
            (1, [64, 48], 14, 3, 2, 1),
            // Winograd.
            (4, [64, 64], 8, 3, 1, 1),
            // Pointwise, chunks of several images.
            (4, [600, 8], 3, 1, 1, 0),
        ];
        let (pool, on) = crate::bf16::pool(true).unwrap();
        assert!(on);
        pool.install(|| {
            for (i, &(batch, [cin, cout], side, kernel, stride, padding)) in cases.iter().enumerate() {
                let g = ConvGeometry::square(batch, [cin, cout], side, kernel, stride, padding);
                assert_eq!(crate::winograd::applies(&g), i == 3, "case {i}: Winograd's or direct");
                let shaped = |values: Vec<f32>, shape: [usize; 4]| {
                    FlexTensor::from_data(TensorData::new(values, Shape::new(shape)))
                };
                let x = values(g.x_len(), 10 * i as u32 + 1);
                let (scale, shift) = (values(cout, 10 * i as u32 + 2), values(cout, 10 * i as u32 + 3));
                let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1);
                let activation = EpilogueActivation::Relu { cap: f32::INFINITY };
                let epilogue = Epilogue { scale: &scale, shift: &shift, activation, residual: None };
                let served = |weight: &FlexTensor| {
                    let y = <Flex as DeepKernels>::conv2d_scale_shift(
                        shaped(x.clone(), [batch, cin, side, side]),
                        weight.clone(),
                        flex(&scale),
                        flex(&shift),
                        options.clone(),
                        activation,
                    );
                    host(&y)
                };
                let weight_shape = [cout, cin, kernel, kernel];
                let mut replaced = None;
                for model in 0..2u32 {
                    let w = values(g.weight_len(), 10 * i as u32 + 4 + model);
                    let expected = conv::forward_with(&g, &x, &w, Some(&epilogue));
                    let weight = shaped(w, weight_shape);
                    let key = (f32s(&weight).as_ptr() as usize, g.weight_len());
                    for call in 0..3 {
                        assert_eq!(served(&weight), expected, "case {i}, model {model}, call {call}");
                        assert!(crate::prepared::is_cached(key.0, key.1), "case {i}, model {model}: kept");
                    }
                    if let Some(old) = replaced.replace(key) {
                        // The first model's weights, dropped before the second's were prepared.
                        assert!(!crate::prepared::is_cached(old.0, old.1), "case {i}: the replaced weights' entry");
                    }
                }
                // The second model's weights, dropped with nothing prepared after them.
                let last = replaced.expect("two models");
                assert!(crate::prepared::is_cached(last.0, last.1), "case {i}: kept until a sweep");
                crate::drop_unused_prepared_filters();
                assert!(!crate::prepared::is_cached(last.0, last.1), "case {i}: dropped by the sweep");
            }
        });
    }

    #[test]
    fn fused_sgd_is_the_default_step() {
        let n = 70_001;
        for momentum in [None, Some((0.9, 0.0, false)), Some((0.9, 0.1, true))] {
            for weight_decay in [None, Some(1e-3)] {
                let step = SgdStep { lr: 0.1, weight_decay, momentum };
                let (mut fused, mut reference) = ((flex(&values(n, 1)), None), (flex(&values(n, 1)), None));
                for time in 1..=3u32 {
                    let grad = values(n, time + 1);
                    let first = fused.1.is_none();
                    let buffer = fused.1.take().unwrap_or_else(|| flex(&vec![f32::NAN; n]));
                    let (p, v) = <Flex as DeepKernels>::sgd_step(fused.0, flex(&grad), buffer, step, first);
                    fused = (p, Some(v));
                    let (p, v) = burn_sgd_step::<Flex>(reference.0, flex(&grad), reference.1.take(), step);
                    reference = (p, v);
                    let case = format!("momentum {momentum:?}, decay {weight_decay:?}, step {time}");
                    assert_eq!(host(&fused.0), host(&reference.0), "{case}");
                    if momentum.is_some() {
                        assert_eq!(host(fused.1.as_ref().unwrap()), host(reference.1.as_ref().unwrap()), "{case}");
                    }
                }
            }
        }
    }
}
