//! torchvision's ResNet (v1.5: the stride is on the 3×3 convolution of a Bottleneck), with
//! BasicBlock or Bottleneck, any layer counts and stage widths.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

use crate::nn::{Activation, BatchNorm2d, Padding, conv_bn_act, conv_bn_residual_act, conv2d, global_avg_pool};
use crate::torch::TorchModel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

impl BlockKind {
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ResNetConfig {
    pub block: BlockKind,
    pub layers: [usize; 4],
    /// Planes of each stage; the stem has `widths[0]` channels. torchvision: [64, 128, 256, 512].
    pub widths: [usize; 4],
    pub num_classes: usize,
}

impl ResNetConfig {
    pub fn resnet18(num_classes: usize) -> Self {
        Self { block: BlockKind::Basic, layers: [2, 2, 2, 2], widths: [64, 128, 256, 512], num_classes }
    }
    pub fn resnet34(num_classes: usize) -> Self {
        Self { block: BlockKind::Basic, layers: [3, 4, 6, 3], widths: [64, 128, 256, 512], num_classes }
    }
    pub fn resnet50(num_classes: usize) -> Self {
        Self { block: BlockKind::Bottleneck, layers: [3, 4, 6, 3], widths: [64, 128, 256, 512], num_classes }
    }
    pub fn resnet101(num_classes: usize) -> Self {
        Self { block: BlockKind::Bottleneck, layers: [3, 4, 23, 3], widths: [64, 128, 256, 512], num_classes }
    }
    pub fn resnet152(num_classes: usize) -> Self {
        Self { block: BlockKind::Bottleneck, layers: [3, 8, 36, 3], widths: [64, 128, 256, 512], num_classes }
    }

    pub fn feature_dim(&self) -> usize {
        self.widths[3] * self.block.expansion()
    }

    pub fn init(&self, device: &Device) -> ResNet {
        let stem = self.widths[0];
        let mut inplanes = stem;
        let mut stages: Vec<Vec<Block>> = Vec::new();
        for (stage, (&blocks, &planes)) in self.layers.iter().zip(&self.widths).enumerate() {
            let stride = if stage == 0 { 1 } else { 2 };
            let mut stage_blocks = Vec::with_capacity(blocks);
            for i in 0..blocks {
                let s = if i == 0 { stride } else { 1 };
                stage_blocks.push(Block::new(self.block, inplanes, planes, s, device));
                inplanes = planes * self.block.expansion();
            }
            stages.push(stage_blocks);
        }
        let mut stages = stages.into_iter();
        ResNet {
            conv1: conv2d([3, stem], 7, 2, Padding::Symmetric(3), 1, false, device),
            bn1: BatchNorm2d::new(stem, 1e-5, 0.1, device),
            layer1: stages.next().unwrap(),
            layer2: stages.next().unwrap(),
            layer3: stages.next().unwrap(),
            layer4: stages.next().unwrap(),
            fc: LinearConfig::new(self.feature_dim(), self.num_classes).init(device),
        }
    }
}

/// `downsample`: a 1×1 convolution and a batch norm (Sequential indices 0 and 1).
#[derive(Module, Debug)]
pub struct Downsample {
    pub _0: Conv2d,
    pub _1: BatchNorm2d,
}

#[derive(Module, Debug)]
pub struct BasicBlock {
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    pub conv2: Conv2d,
    pub bn2: BatchNorm2d,
    pub downsample: Option<Downsample>,
}

#[derive(Module, Debug)]
pub struct Bottleneck {
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    pub conv2: Conv2d,
    pub bn2: BatchNorm2d,
    pub conv3: Conv2d,
    pub bn3: BatchNorm2d,
    pub downsample: Option<Downsample>,
}

// Built once per model; boxing the variants would only add indirection to every forward.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Block {
    Basic(BasicBlock),
    Bottleneck(Bottleneck),
}

fn bn(c: usize, device: &Device) -> BatchNorm2d {
    BatchNorm2d::new(c, 1e-5, 0.1, device)
}

impl Block {
    fn new(kind: BlockKind, inplanes: usize, planes: usize, stride: usize, device: &Device) -> Block {
        let out = planes * kind.expansion();
        let downsample = (stride != 1 || inplanes != out).then(|| Downsample {
            _0: conv2d([inplanes, out], 1, stride, Padding::Symmetric(0), 1, false, device),
            _1: bn(out, device),
        });
        match kind {
            BlockKind::Basic => Block::Basic(BasicBlock {
                conv1: conv2d([inplanes, planes], 3, stride, Padding::Symmetric(1), 1, false, device),
                bn1: bn(planes, device),
                conv2: conv2d([planes, planes], 3, 1, Padding::Symmetric(1), 1, false, device),
                bn2: bn(planes, device),
                downsample,
            }),
            BlockKind::Bottleneck => Block::Bottleneck(Bottleneck {
                conv1: conv2d([inplanes, planes], 1, 1, Padding::Symmetric(0), 1, false, device),
                bn1: bn(planes, device),
                conv2: conv2d([planes, planes], 3, stride, Padding::Symmetric(1), 1, false, device),
                bn2: bn(planes, device),
                conv3: conv2d([planes, out], 1, 1, Padding::Symmetric(0), 1, false, device),
                bn3: bn(out, device),
                downsample,
            }),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let downsample = match self {
            Block::Basic(b) => &b.downsample,
            Block::Bottleneck(b) => &b.downsample,
        };
        let identity = match downsample {
            Some(d) => conv_bn_act(&d._0, &d._1, Activation::None, x.clone()),
            None => x.clone(),
        };
        // The last convolution's batch norm, the skip connection and the ReLU as one step.
        match self {
            Block::Basic(b) => {
                let out = conv_bn_act(&b.conv1, &b.bn1, Activation::Relu, x);
                conv_bn_residual_act(&b.conv2, &b.bn2, Activation::Relu, out, Some(identity))
            }
            Block::Bottleneck(b) => {
                let out = conv_bn_act(&b.conv1, &b.bn1, Activation::Relu, x);
                let out = conv_bn_act(&b.conv2, &b.bn2, Activation::Relu, out);
                conv_bn_residual_act(&b.conv3, &b.bn3, Activation::Relu, out, Some(identity))
            }
        }
    }
}

#[derive(Module, Debug)]
pub struct ResNet {
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    pub layer1: Vec<Block>,
    pub layer2: Vec<Block>,
    pub layer3: Vec<Block>,
    pub layer4: Vec<Block>,
    pub fc: Linear,
}

impl ResNet {
    /// Pooled features before the classifier: `[batch, feature_dim]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let x = conv_bn_act(&self.conv1, &self.bn1, Activation::Relu, x);
        let mut x = deeptune_kernels::max_pool2d(x, [3, 3], [2, 2], [1, 1]);
        for block in self.layer1.iter().chain(&self.layer2).chain(&self.layer3).chain(&self.layer4) {
            x = block.forward(x);
        }
        global_avg_pool(x)
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.fc.forward(self.features(x))
    }
}

impl TorchModel for ResNet {
    fn head_prefixes() -> &'static [&'static str] {
        &["fc."]
    }
}
