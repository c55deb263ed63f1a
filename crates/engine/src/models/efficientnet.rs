//! torchvision's EfficientNet V1 (B0–B3), with `width_mult` and `depth_mult`.
//!
//! Built as `torchvision.models.efficientnet._efficientnet_conf("efficientnet_bN", ...)` builds it:
//! MBConv blocks with squeeze-excitation and SiLU, BatchNorm eps 1e-5 momentum 0.1 (V1 uses the
//! default `BatchNorm2d`), stochastic depth on the residual branches, head `4 × last` channels.

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use deeptune_kernels::silu;

use crate::nn::{
    Activation, ConvBnAct, ConvBnActConfig, Padding, conv_forward, conv2d, global_avg_pool, make_divisible,
    stochastic_depth,
};
use crate::torch::TorchModel;

#[derive(Debug, Clone)]
pub struct EfficientNetConfig {
    pub width_mult: f64,
    pub depth_mult: f64,
    /// Dropout before the classifier (torchvision: 0.2 for B0/B1, 0.3 for B2/B3).
    pub dropout: f64,
    /// Largest stochastic-depth probability, reached by the last block (torchvision: 0.2).
    pub stochastic_depth_prob: f64,
    pub num_classes: usize,
}

/// torchvision's `MBConvConfig` table for V1:
/// (expand ratio, kernel, stride, input channels, output channels, layers).
const SETTING: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
];

impl EfficientNetConfig {
    /// Dropout 0.2 (B0/B1's), stochastic depth 0.2.
    pub fn new(width_mult: f64, depth_mult: f64, num_classes: usize) -> Self {
        EfficientNetConfig { width_mult, depth_mult, dropout: 0.2, stochastic_depth_prob: 0.2, num_classes }
    }

    pub fn b0(num_classes: usize) -> Self {
        Self::new(1.0, 1.0, num_classes)
    }

    pub fn b1(num_classes: usize) -> Self {
        Self::new(1.0, 1.1, num_classes)
    }

    pub fn b2(num_classes: usize) -> Self {
        Self { dropout: 0.3, ..Self::new(1.1, 1.2, num_classes) }
    }

    pub fn b3(num_classes: usize) -> Self {
        Self { dropout: 0.3, ..Self::new(1.2, 1.4, num_classes) }
    }

    fn adjust_channels(&self, channels: usize) -> usize {
        make_divisible(channels as f64 * self.width_mult, 8)
    }

    fn adjust_depth(&self, layers: usize) -> usize {
        (layers as f64 * self.depth_mult).ceil() as usize
    }

    /// Channels of the pooled features (the classifier's input): 4 × the last stage's output.
    pub fn feature_dim(&self) -> usize {
        4 * self.adjust_channels(SETTING[SETTING.len() - 1].4)
    }

    pub fn init(&self, device: &Device) -> EfficientNet {
        let stem = self.adjust_channels(SETTING[0].3);
        let mut features =
            vec![Feature::ConvBnAct(ConvBnActConfig::new([3, stem], 3, 2, Activation::Silu).init(device))];
        let total_blocks: usize = SETTING.iter().map(|s| self.adjust_depth(s.5)).sum();
        let mut block_id = 0;
        for (expand_ratio, kernel, stride, input, output, layers) in SETTING {
            let input = self.adjust_channels(input);
            let output = self.adjust_channels(output);
            let mut stage = Vec::new();
            for i in 0..self.adjust_depth(layers) {
                let (block_input, block_stride) = if i == 0 { (input, stride) } else { (output, 1) };
                let sd_prob = self.stochastic_depth_prob * block_id as f64 / total_blocks as f64;
                stage.push(MBConv::new(
                    MBConvSetting { expand_ratio, kernel, stride: block_stride, input: block_input, output },
                    sd_prob,
                    device,
                ));
                block_id += 1;
            }
            features.push(Feature::Stage(stage));
        }
        let last_input = self.adjust_channels(SETTING[SETTING.len() - 1].4);
        let last = self.feature_dim();
        features
            .push(Feature::ConvBnAct(ConvBnActConfig::new([last_input, last], 1, 1, Activation::Silu).init(device)));
        EfficientNet {
            features,
            classifier: Classifier {
                _0: DropoutConfig::new(self.dropout).init(),
                _1: LinearConfig::new(last, self.num_classes).init(device),
            },
        }
    }
}

/// One block's settings (torchvision's `MBConvConfig` after width/depth adjustment).
#[derive(Debug, Clone, Copy)]
struct MBConvSetting {
    expand_ratio: usize,
    kernel: usize,
    stride: usize,
    input: usize,
    output: usize,
}

/// torchvision's `SqueezeExcitation`: `x * sigmoid(fc2(silu(fc1(avgpool(x)))))`.
#[derive(Module, Debug)]
pub struct SqueezeExcitation {
    pub fc1: Conv2d,
    pub fc2: Conv2d,
}

impl SqueezeExcitation {
    fn new(channels: usize, squeeze: usize, device: &Device) -> Self {
        SqueezeExcitation {
            fc1: conv2d([channels, squeeze], 1, 1, Padding::Symmetric(0), 1, true, device),
            fc2: conv2d([squeeze, channels], 1, 1, Padding::Symmetric(0), 1, true, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let scale = burn::tensor::module::adaptive_avg_pool2d(x.clone(), [1, 1]);
        let scale = sigmoid(conv_forward(&self.fc2, silu(conv_forward(&self.fc1, scale))));
        x * scale
    }
}

/// One layer of an MBConv's `block` Sequential.
#[derive(Module, Debug)]
pub enum BlockLayer {
    ConvBnAct(ConvBnAct),
    SqueezeExcitation(SqueezeExcitation),
}

/// torchvision's `MBConv`: [expand (if the expansion changes the width), depthwise,
/// squeeze-excitation, project]; residual with stochastic depth when stride 1 and in == out.
#[derive(Module, Debug)]
pub struct MBConv {
    pub block: Vec<BlockLayer>,
    pub use_res_connect: bool,
    pub stochastic_depth_prob: f64,
    /// Stochastic depth is active iff this is enabled and the input is on an autodiff device.
    pub training: Param<burn::module::Flag>,
}

impl MBConv {
    fn new(cnf: MBConvSetting, stochastic_depth_prob: f64, device: &Device) -> Self {
        let expanded = make_divisible((cnf.input * cnf.expand_ratio) as f64, 8);
        let mut block = Vec::with_capacity(4);
        if expanded != cnf.input {
            block.push(BlockLayer::ConvBnAct(
                ConvBnActConfig::new([cnf.input, expanded], 1, 1, Activation::Silu).init(device),
            ));
        }
        block.push(BlockLayer::ConvBnAct(
            ConvBnActConfig::new([expanded, expanded], cnf.kernel, cnf.stride, Activation::Silu)
                .groups(expanded)
                .init(device),
        ));
        let squeeze = (cnf.input / 4).max(1);
        block.push(BlockLayer::SqueezeExcitation(SqueezeExcitation::new(expanded, squeeze, device)));
        block.push(BlockLayer::ConvBnAct(
            ConvBnActConfig::new([expanded, cnf.output], 1, 1, Activation::None).init(device),
        ));
        MBConv {
            block,
            use_res_connect: cnf.stride == 1 && cnf.input == cnf.output,
            stochastic_depth_prob,
            training: Param::from_bool(true),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut out = x.clone();
        for layer in &self.block {
            out = match layer {
                BlockLayer::ConvBnAct(l) => l.forward(out),
                BlockLayer::SqueezeExcitation(l) => l.forward(out),
            };
        }
        if !self.use_res_connect {
            return out;
        }
        let training = x.device().is_autodiff() && self.training.is_enabled();
        stochastic_depth(out, self.stochastic_depth_prob, training) + x
    }
}

/// One entry of `features`: the stem and head convolutions, or a stage (a Sequential of MBConvs).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Feature {
    ConvBnAct(ConvBnAct),
    Stage(Vec<MBConv>),
}

/// `classifier`: Dropout (`0`) and Linear (`1`).
#[derive(Module, Debug)]
pub struct Classifier {
    pub _0: Dropout,
    pub _1: Linear,
}

#[derive(Module, Debug)]
pub struct EfficientNet {
    pub features: Vec<Feature>,
    pub classifier: Classifier,
}

impl EfficientNet {
    /// Pooled features before the classifier: `[batch, feature_dim]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = x;
        for feature in &self.features {
            x = match feature {
                Feature::ConvBnAct(f) => f.forward(x),
                Feature::Stage(blocks) => blocks.iter().fold(x, |x, block| block.forward(x)),
            };
        }
        global_avg_pool(x)
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.classifier._1.forward(self.classifier._0.forward(self.features(x)))
    }
}

impl TorchModel for EfficientNet {
    fn head_prefixes() -> &'static [&'static str] {
        &["classifier.1."]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stochastic_depth_probabilities_grow_linearly() {
        let model = EfficientNetConfig::b0(10).init(&Device::flex());
        let probs: Vec<f64> = model
            .features
            .iter()
            .filter_map(|f| match f {
                Feature::Stage(blocks) => Some(blocks.iter().map(|b| b.stochastic_depth_prob)),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(probs.len(), 16);
        assert_eq!(probs[0], 0.0);
        assert!((probs[15] - 0.2 * 15.0 / 16.0).abs() < 1e-12);
        let residual: Vec<bool> = model
            .features
            .iter()
            .filter_map(|f| match f {
                Feature::Stage(blocks) => Some(blocks.iter().map(|b| b.use_res_connect)),
                _ => None,
            })
            .flatten()
            .collect();
        let expected =
            [false, false, true, false, true, false, true, true, false, true, true, false, true, true, true, false];
        assert_eq!(residual, expected);
    }
}
