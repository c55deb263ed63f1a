//! torchvision's MobileNetV2 with `width_mult`.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;

use crate::nn::{
    Activation, BatchNorm2d, ConvBnAct, ConvBnActConfig, Padding, conv_bn_residual_act, conv_forward, conv2d,
    global_avg_pool, make_divisible,
};
use crate::torch::TorchModel;

#[derive(Debug, Clone)]
pub struct MobileNetV2Config {
    pub width_mult: f64,
    pub num_classes: usize,
    /// Dropout before the classifier (torchvision: 0.2).
    pub dropout: f64,
}

/// (expand ratio t, channels c, repeats n, stride s) — torchvision's table.
const SETTING: [(usize, usize, usize, usize); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

impl MobileNetV2Config {
    pub fn new(width_mult: f64, num_classes: usize) -> Self {
        MobileNetV2Config { width_mult, num_classes, dropout: 0.2 }
    }

    pub fn last_channel(&self) -> usize {
        make_divisible(1280.0 * self.width_mult.max(1.0), 8)
    }

    pub fn init(&self, device: &Device) -> MobileNetV2 {
        let mut input = make_divisible(32.0 * self.width_mult, 8);
        let mut features =
            vec![Feature::ConvBnAct(ConvBnActConfig::new([3, input], 3, 2, Activation::Relu6).init(device))];
        for (t, c, n, s) in SETTING {
            let output = make_divisible(c as f64 * self.width_mult, 8);
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                features.push(Feature::Inverted(InvertedResidual::new(input, output, stride, t, device)));
                input = output;
            }
        }
        let last = self.last_channel();
        features.push(Feature::ConvBnAct(ConvBnActConfig::new([input, last], 1, 1, Activation::Relu6).init(device)));
        MobileNetV2 {
            features,
            classifier: Classifier {
                _0: DropoutConfig::new(self.dropout).init(),
                _1: LinearConfig::new(last, self.num_classes).init(device),
            },
        }
    }
}

/// One layer of an inverted residual's `conv` Sequential.
// Built once per model; boxing the variants would only add indirection to every forward.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum ConvLayer {
    ConvBnAct(ConvBnAct),
    Conv(Conv2d),
    Bn(BatchNorm2d),
}

#[derive(Module, Debug)]
pub struct InvertedResidual {
    pub conv: Vec<ConvLayer>,
    pub use_residual: bool,
}

impl InvertedResidual {
    fn new(input: usize, output: usize, stride: usize, expand_ratio: usize, device: &Device) -> Self {
        let hidden = input * expand_ratio;
        let mut conv = Vec::new();
        if expand_ratio != 1 {
            conv.push(ConvLayer::ConvBnAct(
                ConvBnActConfig::new([input, hidden], 1, 1, Activation::Relu6).init(device),
            ));
        }
        conv.push(ConvLayer::ConvBnAct(
            ConvBnActConfig::new([hidden, hidden], 3, stride, Activation::Relu6).groups(hidden).init(device),
        ));
        conv.push(ConvLayer::Conv(conv2d([hidden, output], 1, 1, Padding::Symmetric(0), 1, false, device)));
        conv.push(ConvLayer::Bn(BatchNorm2d::new(output, 1e-5, 0.1, device)));
        InvertedResidual { conv, use_residual: stride == 1 && input == output }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut residual = self.use_residual.then(|| x.clone());
        let mut out = x;
        let mut layers = self.conv.iter().peekable();
        while let Some(layer) = layers.next() {
            out = match (layer, layers.peek()) {
                // The projection and its batch norm (and the skip connection) as one step.
                (ConvLayer::Conv(conv), Some(ConvLayer::Bn(bn))) => {
                    layers.next();
                    let skip = if layers.peek().is_none() { residual.take() } else { None };
                    conv_bn_residual_act(conv, bn, Activation::None, out, skip)
                }
                (ConvLayer::ConvBnAct(l), _) => l.forward(out),
                (ConvLayer::Conv(l), _) => conv_forward(l, out),
                (ConvLayer::Bn(l), _) => l.forward(out),
            };
        }
        match residual {
            Some(residual) => out + residual,
            None => out,
        }
    }
}

// Built once per model; boxing the variants would only add indirection to every forward.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Feature {
    ConvBnAct(ConvBnAct),
    Inverted(InvertedResidual),
}

#[derive(Module, Debug)]
pub struct Classifier {
    pub _0: Dropout,
    pub _1: Linear,
}

#[derive(Module, Debug)]
pub struct MobileNetV2 {
    pub features: Vec<Feature>,
    pub classifier: Classifier,
}

impl MobileNetV2 {
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = x;
        for feature in &self.features {
            x = match feature {
                Feature::ConvBnAct(f) => f.forward(x),
                Feature::Inverted(f) => f.forward(x),
            };
        }
        global_avg_pool(x)
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.classifier._1.forward(self.classifier._0.forward(self.features(x)))
    }
}

impl TorchModel for MobileNetV2 {
    fn head_prefixes() -> &'static [&'static str] {
        &["classifier.1."]
    }
}
