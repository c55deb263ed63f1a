//! Architectures, named as torchvision (or, for EfficientNet-Lite, lukemelas'
//! `efficientnet_pytorch`) names them, so published checkpoints load as they are.

pub mod efficientnet;
pub mod efficientnet_lite;
pub mod mobilenet_v2;
pub mod resnet;
pub mod vit;

use burn::prelude::*;

/// A model that maps images `[batch, 3, height, width]` to logits `[batch, classes]`.
pub trait ImageClassifier: crate::torch::TorchModel {
    fn forward(&self, x: Tensor<4>) -> Tensor<2>;
}

impl ImageClassifier for resnet::ResNet {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        resnet::ResNet::forward(self, x)
    }
}

impl ImageClassifier for mobilenet_v2::MobileNetV2 {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        mobilenet_v2::MobileNetV2::forward(self, x)
    }
}

impl ImageClassifier for efficientnet::EfficientNet {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        efficientnet::EfficientNet::forward(self, x)
    }
}

impl ImageClassifier for efficientnet_lite::EfficientNetLite {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        efficientnet_lite::EfficientNetLite::forward(self, x)
    }
}

impl ImageClassifier for vit::VisionTransformer {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        vit::VisionTransformer::forward(self, x)
    }
}
