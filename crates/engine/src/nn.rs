//! Layers that behave exactly as PyTorch's, where burn's differ, with PyTorch's parameter names.

use burn::module::{Module, Param, RunningState};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use deeptune_kernels::EpilogueActivation;

/// `torch.nn.BatchNorm2d`: the same parameter names (`weight`, `bias`, `running_mean`,
/// `running_var`) and the same running-variance update, which uses the unbiased batch variance
/// (burn's own BatchNorm uses the biased one, so running statistics would drift from PyTorch's).
#[derive(Module, Debug)]
pub struct BatchNorm2d {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub running_mean: RunningState<Tensor<1>>,
    pub running_var: RunningState<Tensor<1>>,
    pub training: Param<burn::module::Flag>,
    pub momentum: f64,
    pub eps: f64,
}

impl BatchNorm2d {
    pub fn new(features: usize, eps: f64, momentum: f64, device: &Device) -> BatchNorm2d {
        BatchNorm2d {
            weight: burn::nn::Initializer::Ones.init([features], device),
            bias: burn::nn::Initializer::Zeros.init([features], device),
            running_mean: RunningState::new(Tensor::zeros([features], device)),
            running_var: RunningState::new(Tensor::ones([features], device)),
            training: Param::from_bool(true),
            momentum,
            eps,
        }
    }

    /// With running statistics (evaluation mode, or any plain device), the batch norm as one
    /// scale and shift per channel, `γ/√(var + ε)` and `β − mean·scale`; `None` when it
    /// normalises with the batch's own statistics.
    pub fn folded(&self, device: &Device) -> Option<(Tensor<1>, Tensor<1>)> {
        if device.is_autodiff() && self.training.is_enabled() {
            return None;
        }
        let mean = self.running_mean.value().to_device(device);
        let var = self.running_var.value().to_device(device);
        let scale = self.weight.val() / var.add_scalar(self.eps).sqrt();
        let shift = self.bias.val() - mean * scale.clone();
        Some((scale, shift))
    }

    /// Batch statistics (and running-statistics updates) when training on an autodiff device,
    /// running statistics otherwise — as `model.train()` / `model.eval()` in PyTorch.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        self.forward_act(input, Activation::None)
    }

    /// [`BatchNorm2d::forward`] then `activation`; in training, ReLU and ReLU6 run inside the
    /// batch norm's passes (forward and backward) instead of one more pass each way.
    pub fn forward_act(&self, input: Tensor<4>, activation: Activation) -> Tensor<4> {
        self.forward_residual_act(input, None, activation)
    }

    /// `activation(bn(input) + residual)` (no sum without a residual): in training the sum, and
    /// ReLU or ReLU6, in the batch norm's forward pass.
    pub fn forward_residual_act(
        &self,
        input: Tensor<4>,
        residual: Option<Tensor<4>>,
        activation: Activation,
    ) -> Tensor<4> {
        let device = input.device();
        if let Some((scale, shift)) = self.folded(&device) {
            // One scale and shift per channel: two passes over the activations instead of
            // burn's four.
            let channels = scale.dims()[0];
            let normalized = input * scale.reshape([1, channels, 1, 1]) + shift.reshape([1, channels, 1, 1]);
            return activation.apply(match residual {
                Some(residual) => normalized + residual,
                None => normalized,
            });
        }
        let (relu_cap, rest) = match activation {
            Activation::Relu => (Some(f32::INFINITY), Activation::None),
            Activation::Relu6 => (Some(6.0), Activation::None),
            other => (None, other),
        };
        let [batch, _, height, width] = input.dims();
        let count = (batch * height * width) as f64;
        // Our fused kernel (two passes each way) instead of burn's composition of a dozen.
        let (output, batch_mean, batch_var) = match residual {
            Some(residual) => deeptune_kernels::batch_norm_residual_training(
                input,
                self.weight.val(),
                self.bias.val(),
                residual,
                self.eps,
                relu_cap,
            ),
            None => {
                deeptune_kernels::batch_norm_training(input, self.weight.val(), self.bias.val(), self.eps, relu_cap)
            }
        };
        let unbiased = if count > 1.0 { count / (count - 1.0) } else { 1.0 };
        let m = self.momentum;
        let running_mean = self.running_mean.value_sync().to_device(&device);
        let running_var = self.running_var.value_sync().to_device(&device);
        self.running_mean.update(running_mean.mul_scalar(1.0 - m).add(batch_mean.detach().mul_scalar(m)).detach());
        self.running_var
            .update(running_var.mul_scalar(1.0 - m).add(batch_var.detach().mul_scalar(m * unbiased)).detach());
        rest.apply(output)
    }
}

/// The activations torchvision's blocks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    Relu6,
    Silu,
}

impl Activation {
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::None => x,
            Activation::Relu => deeptune_kernels::relu(x),
            Activation::Relu6 => deeptune_kernels::relu6(x),
            Activation::Silu => deeptune_kernels::silu(x),
        }
    }
}

/// Padding of a convolution: PyTorch's symmetric padding, or TensorFlow's "SAME" (asymmetric
/// for even totals, computed from the input size), which EfficientNet-Lite's weights expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Symmetric(usize),
    TfSame,
}

/// A 2-D convolution as torchvision builds them (`weight`, optional `bias`).
pub fn conv2d(
    channels: [usize; 2],
    kernel: usize,
    stride: usize,
    padding: Padding,
    groups: usize,
    bias: bool,
    device: &Device,
) -> Conv2d {
    let padding = match padding {
        Padding::Symmetric(p) => PaddingConfig2d::Explicit(p, p, p, p),
        Padding::TfSame => PaddingConfig2d::Same,
    };
    // PyTorch's default init: kaiming_uniform(a=√5), i.e. U(±1/√fan_in) for weight and bias.
    Conv2dConfig::new(channels, [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(padding)
        .with_groups(groups)
        .with_bias(bias)
        .init(device)
}

/// A convolution's forward pass through our own kernels ([`deeptune_kernels`]): dense
/// convolutions as im2col + one well-shaped matrix product per chunk of images, depthwise ones
/// with a one-sweep backward; both instead of burn's generic convolution backward (a transposed
/// convolution and a convolution over swapped dimensions). Other grouped convolutions are burn's.
pub fn conv_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let [_, channels, height, width] = x.dims();
    let options = conv_options(conv, height, width);
    let y = if conv.groups == 1 {
        deeptune_kernels::dense_conv2d(x, conv.weight.val(), options)
    } else if deeptune_kernels::is_depthwise(channels, conv.weight.dims(), conv.groups) {
        deeptune_kernels::depthwise_conv2d(x, conv.weight.val(), options)
    } else {
        return conv.forward(x);
    };
    match &conv.bias {
        Some(bias) => {
            let out_channels = bias.dims()[0];
            y + bias.val().reshape([1, out_channels, 1, 1])
        }
        None => y,
    }
}

/// `activation(bn(conv(x)))`. For inference (a plain device, the batch norm on running
/// statistics) one operation on our kernels: the batch norm's
/// scale and shift and the activation are applied to each chunk of the convolution's output while
/// it is in cache, instead of two to three more passes over the activations.
pub fn conv_bn_act(conv: &Conv2d, bn: &BatchNorm2d, activation: Activation, x: Tensor<4>) -> Tensor<4> {
    conv_bn_residual_act(conv, bn, activation, x, None)
}

/// `activation(bn(conv(x)) + residual)` (no addition without a residual): [`conv_bn_act`] with a
/// skip connection — for inference also one operation, the residual added in the same epilogue.
pub fn conv_bn_residual_act(
    conv: &Conv2d,
    bn: &BatchNorm2d,
    activation: Activation,
    x: Tensor<4>,
    residual: Option<Tensor<4>>,
) -> Tensor<4> {
    let device = x.device();
    if !device.is_autodiff()
        && let Some((scale, shift)) = bn.folded(&device)
    {
        let [_, _, height, width] = x.dims();
        let shift = match &conv.bias {
            Some(bias) => shift + bias.val() * scale.clone(),
            None => shift,
        };
        let options = conv_options(conv, height, width);
        let activation = match activation {
            Activation::None => EpilogueActivation::Identity,
            Activation::Relu => EpilogueActivation::Relu { cap: f32::INFINITY },
            Activation::Relu6 => EpilogueActivation::Relu { cap: 6.0 },
            Activation::Silu => EpilogueActivation::Silu,
        };
        return deeptune_kernels::conv2d_scale_shift(x, conv.weight.val(), scale, shift, options, activation, residual);
    }
    bn.forward_residual_act(conv_forward(conv, x), residual, activation)
}

/// The options burn's `Conv2d::forward` computes for an input of `height`×`width` (its "same"
/// padding puts the odd pixel at the end, as TensorFlow does).
fn conv_options(conv: &Conv2d, height: usize, width: usize) -> burn::tensor::ops::ConvOptions<2> {
    let same = |kernel: usize, stride: usize, size: usize| {
        let out = size.div_ceil(stride);
        let total = if out > 0 { ((out - 1) * stride + kernel).saturating_sub(size) } else { 0 };
        (total / 2, total - total / 2)
    };
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Same => {
            [same(conv.kernel_size[0], conv.stride[0], height), same(conv.kernel_size[1], conv.stride[1], width)]
        }
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
    };
    burn::tensor::ops::ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups)
}

/// torchvision's `Conv2dNormActivation`: a Sequential of conv (`0`), batch norm (`1`) and an
/// activation without parameters.
#[derive(Module, Debug)]
pub struct ConvBnAct {
    pub _0: Conv2d,
    pub _1: BatchNorm2d,
    #[module(skip)]
    pub activation: Activation,
}

/// How to build a [`ConvBnAct`].
#[derive(Debug, Clone, Copy)]
pub struct ConvBnActConfig {
    pub channels: [usize; 2],
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
    pub padding: Padding,
    pub activation: Activation,
    pub bn_eps: f64,
    pub bn_momentum: f64,
}

impl ConvBnActConfig {
    /// torchvision's defaults: padding (k−1)/2, no bias, BatchNorm eps 1e-5 momentum 0.1.
    pub fn new(channels: [usize; 2], kernel: usize, stride: usize, activation: Activation) -> Self {
        ConvBnActConfig {
            channels,
            kernel,
            stride,
            groups: 1,
            padding: Padding::Symmetric((kernel - 1) / 2),
            activation,
            bn_eps: 1e-5,
            bn_momentum: 0.1,
        }
    }

    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    pub fn init(&self, device: &Device) -> ConvBnAct {
        ConvBnAct {
            _0: conv2d(self.channels, self.kernel, self.stride, self.padding, self.groups, false, device),
            _1: BatchNorm2d::new(self.channels[1], self.bn_eps, self.bn_momentum, device),
            activation: self.activation,
        }
    }
}

impl ConvBnAct {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        conv_bn_act(&self._0, &self._1, self.activation, x)
    }
}

/// torchvision's `_make_divisible`: round channels to a multiple of `divisor`, never more than
/// 10% below the requested value.
pub fn make_divisible(value: f64, divisor: usize) -> usize {
    let divisor_f = divisor as f64;
    let mut new = ((value + divisor_f / 2.0) as usize / divisor * divisor).max(divisor);
    if (new as f64) < 0.9 * value {
        new += divisor;
    }
    new
}

/// Global average pooling to `[batch, channels]`.
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    // A mean over each contiguous plane: flex's adaptive pooling walks it one element at a time.
    let [batch, channels, height, width] = x.dims();
    x.reshape([batch, channels, height * width]).mean_dim(2).reshape([batch, channels])
}

/// torchvision's `StochasticDepth(p, "row")`: in training, drops whole samples of a residual
/// branch with probability `p` and rescales the survivors by 1/(1−p).
pub fn stochastic_depth(x: Tensor<4>, p: f64, training: bool) -> Tensor<4> {
    if !training || p == 0.0 {
        return x;
    }
    let [batch, _, _, _] = x.dims();
    let survival = 1.0 - p;
    let keep = Tensor::<4>::random([batch, 1, 1, 1], burn::tensor::Distribution::Bernoulli(survival), &x.device());
    x * keep.div_scalar(survival)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_divisible_matches_torchvision() {
        assert_eq!(make_divisible(32.0 * 0.25, 8), 8);
        assert_eq!(make_divisible(16.0 * 0.25, 8), 8);
        assert_eq!(make_divisible(24.0 * 0.25, 8), 8);
        assert_eq!(make_divisible(1280.0, 8), 1280);
        assert_eq!(make_divisible(40.0 * 1.1, 8), 48);
        assert_eq!(make_divisible(112.0 * 1.2, 8), 136);
    }
}
