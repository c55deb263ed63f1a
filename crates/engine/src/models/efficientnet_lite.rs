//! EfficientNet-Lite0/1/2 (TensorFlow's mobile variant of EfficientNet) with the parameter names
//! of lukemelas' `efficientnet_pytorch` (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...), the
//! names the published PyTorch ports of the Lite checkpoints use.
//!
//! The "lite" rules: no squeeze-excitation, ReLU6 instead of swish, stem (32) and head (1280)
//! channels not scaled, and the first and last stages' repeats not scaled. TensorFlow "SAME"
//! padding everywhere (asymmetric for stride 2), no biases on convolutions, BatchNorm eps 1e-3
//! and momentum 0.01 (TensorFlow's 0.99).

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;

use crate::nn::{
    Activation, BatchNorm2d, Padding, conv_bn_act, conv_bn_residual_act, conv2d, global_avg_pool, make_divisible,
    stochastic_depth,
};
use crate::torch::TorchModel;

const BN_EPS: f64 = 1e-3;
const BN_MOMENTUM: f64 = 0.01;
const STEM: usize = 32;
const HEAD: usize = 1280;

/// (repeats, kernel, stride, expand ratio, input channels, output channels) — EfficientNet's
/// blocks as TensorFlow's `efficientnet_lite_builder` lists them.
const BLOCKS: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

#[derive(Debug, Clone)]
pub struct EfficientNetLiteConfig {
    pub width_mult: f64,
    pub depth_mult: f64,
    /// Dropout before `_fc` (Lite0/1: 0.2, Lite2: 0.3).
    pub dropout: f64,
    /// Largest drop-connect (stochastic depth) rate, reached by the last block; training only.
    pub drop_connect_rate: f64,
    pub num_classes: usize,
}

impl EfficientNetLiteConfig {
    pub fn new(width_mult: f64, depth_mult: f64, dropout: f64, num_classes: usize) -> Self {
        EfficientNetLiteConfig { width_mult, depth_mult, dropout, drop_connect_rate: 0.2, num_classes }
    }

    pub fn lite0(num_classes: usize) -> Self {
        Self::new(1.0, 1.0, 0.2, num_classes)
    }

    pub fn lite1(num_classes: usize) -> Self {
        Self::new(1.0, 1.1, 0.2, num_classes)
    }

    pub fn lite2(num_classes: usize) -> Self {
        Self::new(1.1, 1.2, 0.3, num_classes)
    }

    /// `round_filters`: channels × width, to a multiple of 8, never more than 10% below.
    fn round_filters(&self, channels: usize) -> usize {
        make_divisible(channels as f64 * self.width_mult, 8)
    }

    /// `round_repeats`, except for the first and last stages (the lite `fix_head_stem` rule).
    fn repeats(&self, stage: usize, repeats: usize) -> usize {
        if stage == 0 || stage == BLOCKS.len() - 1 {
            repeats
        } else {
            (repeats as f64 * self.depth_mult).ceil() as usize
        }
    }

    /// Channels of the pooled features (`_fc`'s input).
    pub fn feature_dim(&self) -> usize {
        HEAD
    }

    pub fn init(&self, device: &Device) -> EfficientNetLite {
        let mut blocks = Vec::new();
        let mut channels = STEM;
        for (stage, (repeats, kernel, stride, expand_ratio, _, output)) in BLOCKS.into_iter().enumerate() {
            let output = self.round_filters(output);
            for i in 0..self.repeats(stage, repeats) {
                let stride = if i == 0 { stride } else { 1 };
                blocks.push(MBConvBlock::new(channels, output, kernel, stride, expand_ratio, device));
                channels = output;
            }
        }
        let count = blocks.len();
        for (i, block) in blocks.iter_mut().enumerate() {
            block.drop_connect_rate = self.drop_connect_rate * i as f64 / count as f64;
        }
        EfficientNetLite {
            _conv_stem: conv2d([3, STEM], 3, 2, Padding::TfSame, 1, false, device),
            _bn0: bn(STEM, device),
            _blocks: blocks,
            _conv_head: conv2d([channels, HEAD], 1, 1, Padding::TfSame, 1, false, device),
            _bn1: bn(HEAD, device),
            _dropout: DropoutConfig::new(self.dropout).init(),
            _fc: LinearConfig::new(HEAD, self.num_classes).init(device),
        }
    }
}

fn bn(channels: usize, device: &Device) -> BatchNorm2d {
    BatchNorm2d::new(channels, BN_EPS, BN_MOMENTUM, device)
}

/// lukemelas' `MBConvBlock` without squeeze-excitation, with ReLU6.
#[derive(Module, Debug)]
pub struct MBConvBlock {
    pub _expand_conv: Option<Conv2d>,
    pub _bn0: Option<BatchNorm2d>,
    pub _depthwise_conv: Conv2d,
    pub _bn1: BatchNorm2d,
    pub _project_conv: Conv2d,
    pub _bn2: BatchNorm2d,
    pub id_skip: bool,
    /// lukemelas' `drop_connect` rate for this block (global rate × index / blocks).
    pub drop_connect_rate: f64,
    /// Drop-connect is active iff this is enabled and the input is on an autodiff device.
    pub training: Param<burn::module::Flag>,
}

impl MBConvBlock {
    fn new(input: usize, output: usize, kernel: usize, stride: usize, expand_ratio: usize, device: &Device) -> Self {
        let hidden = input * expand_ratio;
        let (expand_conv, bn0) = if expand_ratio != 1 {
            (Some(conv2d([input, hidden], 1, 1, Padding::TfSame, 1, false, device)), Some(bn(hidden, device)))
        } else {
            (None, None)
        };
        MBConvBlock {
            _expand_conv: expand_conv,
            _bn0: bn0,
            _depthwise_conv: conv2d([hidden, hidden], kernel, stride, Padding::TfSame, hidden, false, device),
            _bn1: bn(hidden, device),
            _project_conv: conv2d([hidden, output], 1, 1, Padding::TfSame, 1, false, device),
            _bn2: bn(output, device),
            id_skip: stride == 1 && input == output,
            drop_connect_rate: 0.0,
            training: Param::from_bool(true),
        }
    }

    pub fn forward(&self, inputs: Tensor<4>) -> Tensor<4> {
        let mut x = inputs.clone();
        if let (Some(conv), Some(bn)) = (&self._expand_conv, &self._bn0) {
            x = conv_bn_act(conv, bn, Activation::Relu6, x);
        }
        let x = conv_bn_act(&self._depthwise_conv, &self._bn1, Activation::Relu6, x);
        if !self.id_skip {
            return conv_bn_act(&self._project_conv, &self._bn2, Activation::None, x);
        }
        let training = inputs.device().is_autodiff() && self.training.is_enabled();
        if !training {
            // The projection, its batch norm and the skip connection as one step.
            return conv_bn_residual_act(&self._project_conv, &self._bn2, Activation::None, x, Some(inputs));
        }
        let x = conv_bn_act(&self._project_conv, &self._bn2, Activation::None, x);
        stochastic_depth(x, self.drop_connect_rate, training) + inputs
    }
}

#[derive(Module, Debug)]
pub struct EfficientNetLite {
    pub _conv_stem: Conv2d,
    pub _bn0: BatchNorm2d,
    pub _blocks: Vec<MBConvBlock>,
    pub _conv_head: Conv2d,
    pub _bn1: BatchNorm2d,
    pub _dropout: Dropout,
    pub _fc: Linear,
}

impl EfficientNetLite {
    /// Pooled features before the classifier: `[batch, 1280]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = conv_bn_act(&self._conv_stem, &self._bn0, Activation::Relu6, x);
        for block in &self._blocks {
            x = block.forward(x);
        }
        global_avg_pool(conv_bn_act(&self._conv_head, &self._bn1, Activation::Relu6, x))
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self._fc.forward(self._dropout.forward(self.features(x)))
    }
}

impl TorchModel for EfficientNetLite {
    fn head_prefixes() -> &'static [&'static str] {
        &["_fc."]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lite0_has_the_published_layout() {
        let model = EfficientNetLiteConfig::lite0(1000).init(&Device::flex());
        let strides: Vec<usize> = model._blocks.iter().map(|b| b._depthwise_conv.stride[0]).collect();
        assert_eq!(strides, [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]);
        assert!(model._blocks[0]._expand_conv.is_none());
        assert!(model._blocks[1..].iter().all(|b| b._expand_conv.is_some()));
    }

    #[test]
    fn lite1_and_lite2_scale_the_middle_stages_only() {
        let device = Device::flex();
        // Lite1: depth 1.1 → repeats 1, 3, 3, 4, 4, 5, 1.
        assert_eq!(EfficientNetLiteConfig::lite1(10).init(&device)._blocks.len(), 21);
        // Lite2: depth 1.2 → 1, 3, 3, 4, 4, 5, 1; width 1.1 → last stage 352 channels.
        let lite2 = EfficientNetLiteConfig::lite2(10).init(&device);
        assert_eq!(lite2._blocks.len(), 21);
        assert_eq!(lite2._conv_stem.weight.lazy_shape().to_vec(), vec![32, 3, 3, 3]);
        assert_eq!(lite2._conv_head.weight.lazy_shape().to_vec(), vec![1280, 352, 1, 1]);
    }
}
