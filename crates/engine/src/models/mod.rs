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

/// Any of the architectures, chosen at run time (from a template).
// Built once per run; boxing the variants would only add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(burn::module::Module, Debug)]
pub enum Classifier {
    ResNet(resnet::ResNet),
    MobileNetV2(mobilenet_v2::MobileNetV2),
    EfficientNet(efficientnet::EfficientNet),
    EfficientNetLite(efficientnet_lite::EfficientNetLite),
    Vit(vit::VisionTransformer),
}

impl crate::torch::TorchModel for Classifier {
    fn torch_key(path: String) -> String {
        // Only ViT has paths that need more than the generic rules.
        <vit::VisionTransformer as crate::torch::TorchModel>::torch_key(path)
    }

    fn head_prefixes() -> &'static [&'static str] {
        &["fc.", "classifier.1.", "_fc.", "heads."]
    }
}

impl ImageClassifier for Classifier {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Classifier::ResNet(m) => m.forward(x),
            Classifier::MobileNetV2(m) => m.forward(x),
            Classifier::EfficientNet(m) => m.forward(x),
            Classifier::EfficientNetLite(m) => m.forward(x),
            Classifier::Vit(m) => m.forward(x),
        }
    }
}

/// An architecture by name, as templates and trained-model manifests name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
    Resnet152,
    MobilenetV2,
    EfficientnetB0,
    EfficientnetB1,
    EfficientnetB2,
    EfficientnetB3,
    EfficientnetLite0,
    EfficientnetLite1,
    EfficientnetLite2,
    VitB16,
    VitB32,
}

impl Architecture {
    /// The model for `num_classes`, freshly initialised (lazily: loading weights first skips
    /// the random draws).
    pub fn build(self, num_classes: usize, device: &Device) -> Classifier {
        use Architecture::*;
        match self {
            Resnet18 => Classifier::ResNet(resnet::ResNetConfig::resnet18(num_classes).init(device)),
            Resnet34 => Classifier::ResNet(resnet::ResNetConfig::resnet34(num_classes).init(device)),
            Resnet50 => Classifier::ResNet(resnet::ResNetConfig::resnet50(num_classes).init(device)),
            Resnet101 => Classifier::ResNet(resnet::ResNetConfig::resnet101(num_classes).init(device)),
            Resnet152 => Classifier::ResNet(resnet::ResNetConfig::resnet152(num_classes).init(device)),
            MobilenetV2 => Classifier::MobileNetV2(mobilenet_v2::MobileNetV2Config::new(1.0, num_classes).init(device)),
            EfficientnetB0 => Classifier::EfficientNet(efficientnet::EfficientNetConfig::b0(num_classes).init(device)),
            EfficientnetB1 => Classifier::EfficientNet(efficientnet::EfficientNetConfig::b1(num_classes).init(device)),
            EfficientnetB2 => Classifier::EfficientNet(efficientnet::EfficientNetConfig::b2(num_classes).init(device)),
            EfficientnetB3 => Classifier::EfficientNet(efficientnet::EfficientNetConfig::b3(num_classes).init(device)),
            EfficientnetLite0 => {
                Classifier::EfficientNetLite(efficientnet_lite::EfficientNetLiteConfig::lite0(num_classes).init(device))
            }
            EfficientnetLite1 => {
                Classifier::EfficientNetLite(efficientnet_lite::EfficientNetLiteConfig::lite1(num_classes).init(device))
            }
            EfficientnetLite2 => {
                Classifier::EfficientNetLite(efficientnet_lite::EfficientNetLiteConfig::lite2(num_classes).init(device))
            }
            VitB16 => Classifier::Vit(vit::VitConfig::b_16(num_classes).init(device)),
            VitB32 => Classifier::Vit(vit::VitConfig::b_32(num_classes).init(device)),
        }
    }
}
