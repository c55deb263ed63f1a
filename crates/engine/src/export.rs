//! ONNX export of a trained classifier, for inference outside deeptune: one graph from the
//! preprocessed image (`input`, `[N, 3, size, size]`, the manifest's normalisation applied) to
//! `logits` and `probabilities` (softmax or sigmoid, as the model was trained). Batch norms are
//! folded into the convolutions before them (inference only). Opset 17.
//!
//! The ONNX messages are written with prost from the field numbers of `onnx.proto3` (only the
//! fields used here), so no protobuf compiler is needed to build.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use prost::Message;

use crate::artifact::Manifest;
use crate::models::{Classifier, efficientnet, efficientnet_lite, mobilenet_v2, resnet, vit};
use crate::nn::{Activation, BatchNorm2d, ConvBnAct};

/// 17: LayerNormalization is a standard op from there (ViT).
const OPSET: i64 = 17;
const IR_VERSION: i64 = 8;

/// The subset of `onnx.proto3` an exported classifier needs.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(int64, tag = "1")]
        pub ir_version: i64,
        #[prost(string, tag = "2")]
        pub producer_name: String,
        #[prost(string, tag = "3")]
        pub producer_version: String,
        #[prost(string, tag = "6")]
        pub doc_string: String,
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
        #[prost(message, repeated, tag = "8")]
        pub opset_import: Vec<OperatorSetIdProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OperatorSetIdProto {
        #[prost(string, tag = "1")]
        pub domain: String,
        #[prost(int64, tag = "2")]
        pub version: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeProto>,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfoProto>,
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfoProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeProto {
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        #[prost(string, tag = "3")]
        pub name: String,
        #[prost(string, tag = "4")]
        pub op_type: String,
        #[prost(message, repeated, tag = "5")]
        pub attribute: Vec<AttributeProto>,
    }

    /// `type`: 1 FLOAT, 2 INT, 7 INTS.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeProto {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(float, tag = "2")]
        pub f: f32,
        #[prost(int64, tag = "3")]
        pub i: i64,
        #[prost(int64, repeated, tag = "8")]
        pub ints: Vec<i64>,
        #[prost(int32, tag = "20")]
        pub r#type: i32,
    }

    /// `data_type` 1 is FLOAT, 7 INT64; values little-endian in `raw_data`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        #[prost(int64, repeated, tag = "1")]
        pub dims: Vec<i64>,
        #[prost(int32, tag = "2")]
        pub data_type: i32,
        #[prost(string, tag = "8")]
        pub name: String,
        #[prost(bytes = "vec", tag = "9")]
        pub raw_data: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfoProto {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<TypeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeProto {
        #[prost(message, optional, tag = "1")]
        pub tensor_type: Option<TensorTypeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorTypeProto {
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShapeProto {
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<Dimension>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(int64, optional, tag = "1")]
        pub dim_value: Option<i64>,
        #[prost(string, optional, tag = "2")]
        pub dim_param: Option<String>,
    }
}

use proto::*;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("ONNX export is not available for {0}")]
    Unsupported(String),
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), ints: values.to_vec(), r#type: 7, ..Default::default() }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i: value, r#type: 2, ..Default::default() }
}

fn float_values(t: Tensor<1>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 tensor")
}

/// A graph under construction: nodes in order, initializers, the running spatial size.
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    counter: usize,
    /// Height and width of the feature map the next convolution sees.
    size: [usize; 2],
}

impl Graph {
    fn name(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_{}", self.counter)
    }

    fn constant(&mut self, prefix: &str, dims: &[usize], values: &[f32]) -> String {
        let name = self.name(prefix);
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: 1,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    }

    fn constant_i64(&mut self, prefix: &str, dims: &[usize], values: &[i64]) -> String {
        let name = self.name(prefix);
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: 7,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    }

    fn tensor_constant<const D: usize>(&mut self, prefix: &str, t: Tensor<D>) -> String {
        let dims = t.dims();
        let values = t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 tensor");
        self.constant(prefix, &dims, &values)
    }

    /// `x · W + b` with a burn Linear (weight stored `[in, out]`), on any leading dimensions.
    fn linear(&mut self, x: &str, linear: &burn::nn::Linear) -> String {
        let w = self.tensor_constant("linear_weight", linear.weight.val());
        let product = self.node("MatMul", vec![x.to_string(), w], vec![]);
        match &linear.bias {
            Some(b) => {
                let b = self.tensor_constant("linear_bias", b.val());
                self.add(&product, &b)
            }
            None => product,
        }
    }

    fn layer_norm(&mut self, x: &str, norm: &burn::nn::LayerNorm, epsilon: f64) -> String {
        let scale = self.tensor_constant("ln_scale", norm.gamma.val());
        let mut inputs = vec![x.to_string(), scale];
        if let Some(beta) = &norm.beta {
            inputs.push(self.tensor_constant("ln_bias", beta.val()));
        }
        let epsilon = AttributeProto { name: "epsilon".into(), f: epsilon as f32, r#type: 1, ..Default::default() };
        self.node("LayerNormalization", inputs, vec![int("axis", -1), epsilon])
    }

    /// GELU, exact: 0.5·x·(1 + erf(x/√2)).
    fn gelu(&mut self, x: &str) -> String {
        let inv_sqrt2 = self.constant("inv_sqrt2", &[], &[std::f32::consts::FRAC_1_SQRT_2]);
        let scaled = self.node("Mul", vec![x.to_string(), inv_sqrt2], vec![]);
        let erf = self.node("Erf", vec![scaled], vec![]);
        let one = self.constant("one", &[], &[1.0]);
        let shifted = self.node("Add", vec![erf, one], vec![]);
        let half = self.constant("half", &[], &[0.5]);
        let halved = self.node("Mul", vec![x.to_string(), half], vec![]);
        self.node("Mul", vec![halved, shifted], vec![])
    }

    fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.node("Transpose", vec![x.to_string()], vec![ints("perm", perm)])
    }

    fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let shape = self.constant_i64("shape", &[shape.len()], shape);
        self.node("Reshape", vec![x.to_string(), shape], vec![])
    }

    /// Picks index `i` of `axis` (which disappears).
    fn take(&mut self, x: &str, axis: i64, i: i64) -> String {
        let index = self.constant_i64("index", &[], &[i]);
        self.node("Gather", vec![x.to_string(), index], vec![int("axis", axis)])
    }

    fn node(&mut self, op: &str, inputs: Vec<String>, attributes: Vec<AttributeProto>) -> String {
        let output = self.name(&op.to_lowercase());
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![output.clone()],
            name: output.clone(),
            op_type: op.into(),
            attribute: attributes,
        });
        output
    }

    /// A convolution with the batch norm after it folded in:
    /// w' = w·γ/√(σ²+ε), b' = β + (b − μ)·γ/√(σ²+ε).
    fn conv_bn(&mut self, x: &str, conv: &Conv2d, bn: &BatchNorm2d) -> String {
        self.conv(x, conv, Some(bn))
    }

    /// A convolution of the main path (its output size becomes the running size), with the
    /// batch norm after it, if any, folded in.
    fn conv(&mut self, x: &str, conv: &Conv2d, bn: Option<&BatchNorm2d>) -> String {
        let [out_channels, in_per_group, kh, kw] = conv.weight.val().dims();
        let mut weight = conv.weight.val().into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 weights");
        let conv_bias = conv.bias.as_ref().map(|b| float_values(b.val())).unwrap_or_else(|| vec![0.0; out_channels]);
        let mut bias = conv_bias.clone();
        if let Some(bn) = bn {
            let gamma = float_values(bn.weight.val());
            let beta = float_values(bn.bias.val());
            let mean = float_values(bn.running_mean.value());
            let var = float_values(bn.running_var.value());
            let per_channel = in_per_group * kh * kw;
            for c in 0..out_channels {
                let scale = gamma[c] as f64 / (var[c] as f64 + bn.eps).sqrt();
                for w in &mut weight[c * per_channel..(c + 1) * per_channel] {
                    *w = (*w as f64 * scale) as f32;
                }
                bias[c] = (beta[c] as f64 + (conv_bias[c] as f64 - mean[c] as f64) * scale) as f32;
            }
        }
        let w = self.constant("weight", &[out_channels, in_per_group, kh, kw], &weight);
        let b = self.constant("bias", &[out_channels], &bias);
        // Padding as the engine computes it (TensorFlow's SAME: the odd pixel after).
        let [h, w_in] = self.size;
        let (pads, out) = match &conv.padding {
            PaddingConfig2d::Same => {
                let mut pads = [0usize; 4];
                let mut out = [0usize; 2];
                for (axis, size) in [h, w_in].into_iter().enumerate() {
                    let (k, s, d) = (conv.kernel_size[axis], conv.stride[axis], conv.dilation[axis]);
                    let o = size.div_ceil(s);
                    let total = ((o - 1) * s + (k - 1) * d + 1).saturating_sub(size);
                    pads[axis] = total / 2;
                    pads[axis + 2] = total - total / 2;
                    out[axis] = o;
                }
                (pads, out)
            }
            padding => {
                let (top, left, bottom, right) = match padding {
                    PaddingConfig2d::Explicit(t, l, b, r) => (*t, *l, *b, *r),
                    _ => (0, 0, 0, 0),
                };
                let pads = [top, left, bottom, right];
                let mut out = [0usize; 2];
                for (axis, size) in [h, w_in].into_iter().enumerate() {
                    let (k, s, d) = (conv.kernel_size[axis], conv.stride[axis], conv.dilation[axis]);
                    out[axis] = (size + pads[axis] + pads[axis + 2] - d * (k - 1) - 1) / s + 1;
                }
                (pads, out)
            }
        };
        self.size = out;
        self.node(
            "Conv",
            vec![x.to_string(), w, b],
            vec![
                ints("kernel_shape", &[kh as i64, kw as i64]),
                ints("strides", &[conv.stride[0] as i64, conv.stride[1] as i64]),
                ints("dilations", &[conv.dilation[0] as i64, conv.dilation[1] as i64]),
                ints("pads", &pads.map(|p| p as i64)),
                int("group", conv.groups as i64),
            ],
        )
    }

    /// A convolution without a batch norm (squeeze-excitation's), on a 1×1 map: the main path's
    /// size is left alone.
    fn conv_1x1(&mut self, x: &str, conv: &Conv2d) -> String {
        let [out_channels, in_per_group, kh, kw] = conv.weight.val().dims();
        let weight = conv.weight.val().into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 weights");
        let bias = conv.bias.as_ref().map(|b| float_values(b.val())).unwrap_or_else(|| vec![0.0; out_channels]);
        let w = self.constant("weight", &[out_channels, in_per_group, kh, kw], &weight);
        let b = self.constant("bias", &[out_channels], &bias);
        self.node("Conv", vec![x.to_string(), w, b], vec![ints("kernel_shape", &[kh as i64, kw as i64])])
    }

    fn activation(&mut self, x: &str, activation: Activation) -> String {
        match activation {
            Activation::None => x.to_string(),
            Activation::Relu => self.relu(x),
            Activation::Relu6 => self.relu6(x),
            Activation::Silu => self.silu(x),
        }
    }

    fn conv_bn_act(&mut self, x: &str, layer: &ConvBnAct) -> String {
        let c = self.conv_bn(x, &layer._0, &layer._1);
        self.activation(&c, layer.activation)
    }

    /// x · sigmoid(x)
    fn silu(&mut self, x: &str) -> String {
        let s = self.node("Sigmoid", vec![x.to_string()], vec![]);
        self.node("Mul", vec![x.to_string(), s], vec![])
    }

    fn relu(&mut self, x: &str) -> String {
        self.node("Relu", vec![x.to_string()], vec![])
    }

    fn relu6(&mut self, x: &str) -> String {
        let (low, high) = (self.constant("zero", &[], &[0.0]), self.constant("six", &[], &[6.0]));
        self.node("Clip", vec![x.to_string(), low, high], vec![])
    }

    fn add(&mut self, a: &str, b: &str) -> String {
        self.node("Add", vec![a.to_string(), b.to_string()], vec![])
    }

    /// Global average pooling, flattening, then the linear classifier.
    fn head(&mut self, x: &str, fc: &burn::nn::Linear) -> String {
        let pooled = self.node("GlobalAveragePool", vec![x.to_string()], vec![]);
        let flat = self.node("Flatten", vec![pooled], vec![int("axis", 1)]);
        // burn stores a Linear's weight as [in, out]: Gemm multiplies by it as is.
        let [inputs, outputs] = fc.weight.val().dims();
        let weight = fc.weight.val().into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 weights");
        let w = self.constant("fc_weight", &[inputs, outputs], &weight);
        let bias = fc.bias.as_ref().map(|b| float_values(b.val())).unwrap_or_else(|| vec![0.0; outputs]);
        let b = self.constant("fc_bias", &[outputs], &bias);
        self.node("Gemm", vec![flat, w, b], vec![])
    }
}

fn lite(g: &mut Graph, x: &str, m: &efficientnet_lite::EfficientNetLite) -> String {
    let conv = g.conv_bn(x, &m._conv_stem, &m._bn0);
    let mut x = g.relu6(&conv);
    for block in &m._blocks {
        let input = x.clone();
        let size = g.size;
        if let (Some(conv), Some(bn)) = (&block._expand_conv, &block._bn0) {
            let c = g.conv_bn(&x, conv, bn);
            x = g.relu6(&c);
        }
        let c = g.conv_bn(&x, &block._depthwise_conv, &block._bn1);
        x = g.relu6(&c);
        x = g.conv_bn(&x, &block._project_conv, &block._bn2);
        if block.id_skip {
            debug_assert_eq!(size, g.size);
            x = g.add(&x, &input);
        }
    }
    let c = g.conv_bn(&x, &m._conv_head, &m._bn1);
    let x = g.relu6(&c);
    g.head(&x, &m._fc)
}

fn mobilenet_v2(g: &mut Graph, x: &str, m: &mobilenet_v2::MobileNetV2) -> String {
    let mut x = x.to_string();
    for feature in &m.features {
        x = match feature {
            mobilenet_v2::Feature::ConvBnAct(layer) => g.conv_bn_act(&x, layer),
            mobilenet_v2::Feature::Inverted(block) => {
                let input = x.clone();
                let mut out = x.clone();
                let mut pending: Option<&Conv2d> = None;
                for layer in &block.conv {
                    match layer {
                        mobilenet_v2::ConvLayer::ConvBnAct(l) => out = g.conv_bn_act(&out, l),
                        mobilenet_v2::ConvLayer::Conv(conv) => pending = Some(conv),
                        mobilenet_v2::ConvLayer::Bn(bn) => {
                            let conv = pending.take().expect("a batch norm follows its convolution");
                            out = g.conv_bn(&out, conv, bn);
                        }
                    }
                }
                if block.use_residual { g.add(&out, &input) } else { out }
            }
        };
    }
    g.head(&x, &m.classifier._1)
}

fn efficientnet(g: &mut Graph, x: &str, m: &efficientnet::EfficientNet) -> String {
    let mut x = x.to_string();
    for feature in &m.features {
        match feature {
            efficientnet::Feature::ConvBnAct(layer) => x = g.conv_bn_act(&x, layer),
            efficientnet::Feature::Stage(blocks) => {
                for block in blocks {
                    let input = x.clone();
                    let mut out = x.clone();
                    for layer in &block.block {
                        out = match layer {
                            efficientnet::BlockLayer::ConvBnAct(l) => g.conv_bn_act(&out, l),
                            efficientnet::BlockLayer::SqueezeExcitation(se) => {
                                let pooled = g.node("GlobalAveragePool", vec![out.clone()], vec![]);
                                let squeezed = g.conv_1x1(&pooled, &se.fc1);
                                let activated = g.silu(&squeezed);
                                let expanded = g.conv_1x1(&activated, &se.fc2);
                                let scale = g.node("Sigmoid", vec![expanded], vec![]);
                                g.node("Mul", vec![out.clone(), scale], vec![])
                            }
                        };
                    }
                    x = if block.use_res_connect { g.add(&out, &input) } else { out };
                }
            }
        }
    }
    g.head(&x, &m.classifier._1)
}

/// torchvision's ViT: patches, class token, position embedding, pre-norm encoder blocks,
/// final LayerNorm, the class token's features through the head. Batch size stays symbolic.
fn vision_transformer(g: &mut Graph, x: &str, m: &vit::VisionTransformer) -> String {
    let d = m.hidden_dim as i64;
    let patches = g.conv(x, &m.conv_proj, None);
    let flat = g.reshape(&patches, &[0, d, -1]);
    let tokens = g.transpose(&flat, &[0, 2, 1]);
    // The class token, repeated for the batch: Expand to [N, 1, D].
    let shape = g.node("Shape", vec![tokens.clone()], vec![]);
    let first = g.constant_i64("first", &[1], &[0]);
    let batch = g.node("Gather", vec![shape, first], vec![int("axis", 0)]);
    let rest = g.constant_i64("one_d", &[2], &[1, d]);
    let target = g.node("Concat", vec![batch, rest], vec![int("axis", 0)]);
    let token = g.tensor_constant("class_token", m.class_token.val());
    let tokens_class = g.node("Expand", vec![token, target], vec![]);
    let joined = g.node("Concat", vec![tokens_class, tokens], vec![int("axis", 1)]);
    let position = g.tensor_constant("pos_embedding", m.encoder.pos_embedding.val());
    let mut x = g.add(&joined, &position);
    for layer in &m.encoder.layers {
        let attention = &layer.self_attention;
        let heads = attention.num_heads as i64;
        let head_dim = d / heads;
        let normed = g.layer_norm(&x, &layer.ln_1, vit::LN_EPS);
        let w = g.tensor_constant("in_proj_weight", attention.in_proj_weight.val().transpose());
        let projected = g.node("MatMul", vec![normed, w], vec![]);
        let b = g.tensor_constant("in_proj_bias", attention.in_proj_bias.val());
        let qkv = g.add(&projected, &b);
        let split = g.reshape(&qkv, &[0, 0, 3, heads, head_dim]);
        let qkv = g.transpose(&split, &[2, 0, 3, 1, 4]);
        let (q, k, v) = (g.take(&qkv, 0, 0), g.take(&qkv, 0, 1), g.take(&qkv, 0, 2));
        let kt = g.transpose(&k, &[0, 1, 3, 2]);
        let scores = g.node("MatMul", vec![q, kt], vec![]);
        let scale = g.constant("scale", &[], &[1.0 / (head_dim as f32).sqrt()]);
        let scaled = g.node("Mul", vec![scores, scale], vec![]);
        let weights = g.node("Softmax", vec![scaled], vec![int("axis", -1)]);
        let context = g.node("MatMul", vec![weights, v], vec![]);
        let context = g.transpose(&context, &[0, 2, 1, 3]);
        let context = g.reshape(&context, &[0, 0, d]);
        let attended = g.linear(&context, &attention.out_proj);
        x = g.add(&attended, &x);
        let normed = g.layer_norm(&x, &layer.ln_2, vit::LN_EPS);
        let hidden = g.linear(&normed, &layer.mlp._0);
        let activated = g.gelu(&hidden);
        let out = g.linear(&activated, &layer.mlp._3);
        x = g.add(&out, &x);
    }
    let normed = g.layer_norm(&x, &m.encoder.ln, vit::LN_EPS);
    let class = g.take(&normed, 1, 0);
    g.linear(&class, &m.heads.head)
}

fn resnet_block(g: &mut Graph, x: &str, block: &resnet::Block) -> String {
    let size = g.size;
    let (out, downsample) = match block {
        resnet::Block::Basic(b) => {
            let c = g.conv_bn(x, &b.conv1, &b.bn1);
            let r = g.relu(&c);
            (g.conv_bn(&r, &b.conv2, &b.bn2), &b.downsample)
        }
        resnet::Block::Bottleneck(b) => {
            let c = g.conv_bn(x, &b.conv1, &b.bn1);
            let r = g.relu(&c);
            let c = g.conv_bn(&r, &b.conv2, &b.bn2);
            let r = g.relu(&c);
            (g.conv_bn(&r, &b.conv3, &b.bn3), &b.downsample)
        }
    };
    let after = g.size;
    let identity = match downsample {
        Some(d) => {
            g.size = size;
            let s = g.conv_bn(x, &d._0, &d._1);
            debug_assert_eq!(g.size, after);
            s
        }
        None => x.to_string(),
    };
    let sum = g.add(&out, &identity);
    g.relu(&sum)
}

fn resnet(g: &mut Graph, x: &str, m: &resnet::ResNet) -> String {
    let c = g.conv_bn(x, &m.conv1, &m.bn1);
    let r = g.relu(&c);
    let mut x = g.node(
        "MaxPool",
        vec![r],
        vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])],
    );
    g.size = g.size.map(|s| (s + 2 - 3) / 2 + 1);
    for block in m.layer1.iter().chain(&m.layer2).chain(&m.layer3).chain(&m.layer4) {
        x = resnet_block(g, &x, block);
    }
    g.head(&x, &m.fc)
}

fn tensor_value(name: &str, dims: Vec<Dimension>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto { elem_type: 1, shape: Some(TensorShapeProto { dim: dims }) }),
        }),
    }
}

fn fixed(n: usize) -> Dimension {
    Dimension { dim_value: Some(n as i64), dim_param: None }
}

fn batch() -> Dimension {
    Dimension { dim_value: None, dim_param: Some("N".into()) }
}

/// The model as an ONNX file's bytes.
pub fn to_onnx(model: &Classifier, manifest: &Manifest) -> Result<Vec<u8>, ExportError> {
    let size = manifest.image_size;
    let mut g = Graph { nodes: Vec::new(), initializers: Vec::new(), counter: 0, size: [size, size] };
    let logits_node = match model {
        Classifier::EfficientNetLite(m) => lite(&mut g, "input", m),
        Classifier::ResNet(m) => resnet(&mut g, "input", m),
        Classifier::MobileNetV2(m) => mobilenet_v2(&mut g, "input", m),
        Classifier::EfficientNet(m) => efficientnet(&mut g, "input", m),
        Classifier::Vit(m) => vision_transformer(&mut g, "input", m),
    };
    // Name the outputs.
    let last = g.nodes.last_mut().expect("a graph has nodes");
    last.output = vec!["logits".into()];
    let _ = logits_node;
    let activation = if manifest.mutually_exclusive {
        NodeProto {
            input: vec!["logits".into()],
            output: vec!["probabilities".into()],
            name: "probabilities".into(),
            op_type: "Softmax".into(),
            attribute: vec![int("axis", 1)],
        }
    } else {
        NodeProto {
            input: vec!["logits".into()],
            output: vec!["probabilities".into()],
            name: "probabilities".into(),
            op_type: "Sigmoid".into(),
            attribute: vec![],
        }
    };
    g.nodes.push(activation);
    let classes = manifest.concepts.len();
    let model = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "deeptune".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("concepts: {}", manifest.concepts.join(", ")),
        graph: Some(GraphProto {
            node: g.nodes,
            name: "classifier".into(),
            initializer: g.initializers,
            input: vec![tensor_value("input", vec![batch(), fixed(3), fixed(size), fixed(size)])],
            output: vec![
                tensor_value("logits", vec![batch(), fixed(classes)]),
                tensor_value("probabilities", vec![batch(), fixed(classes)]),
            ],
        }),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
    };
    Ok(model.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Normalization;
    use crate::models::{Architecture, vit::VitConfig};

    fn manifest(architecture: Architecture) -> Manifest {
        Manifest {
            architecture,
            concepts: vec!["a".into(), "b".into(), "c".into()],
            image_size: 32,
            normalization: Normalization::ImageNet,
            mutually_exclusive: true,
            template: "test".into(),
            params: serde_json::Value::Null,
            dataset_hash: String::new(),
            seed: 0,
            engine_version: String::new(),
        }
    }

    #[test]
    fn a_vision_transformer_exports_with_layer_norms() {
        let model = Classifier::Vit(VitConfig::new(32, 8, 2, 2, 32, 64, 3).init(&Device::flex()));
        let bytes = to_onnx(&model, &manifest(Architecture::VitB16)).unwrap();
        let graph = ModelProto::decode(bytes.as_slice()).unwrap().graph.unwrap();
        let norms = graph.node.iter().filter(|n| n.op_type == "LayerNormalization").count();
        assert_eq!(norms, 2 * 2 + 1, "two per block, one at the end");
    }

    #[test]
    fn the_graph_names_its_input_and_outputs_and_folds_batch_norms() {
        let model = Architecture::Resnet18.build(3, &Device::flex()).valid();
        let bytes = to_onnx(&model, &manifest(Architecture::Resnet18)).unwrap();
        let decoded = ModelProto::decode(bytes.as_slice()).unwrap();
        let graph = decoded.graph.unwrap();
        assert_eq!(graph.input[0].name, "input");
        let outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs, ["logits", "probabilities"]);
        assert_eq!(decoded.opset_import[0].version, OPSET);
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(!ops.contains(&"BatchNormalization"));
        assert_eq!(ops.iter().filter(|o| **o == "Conv").count(), 20, "ResNet-18's convolutions, downsamples included");
        assert_eq!(ops.last(), Some(&"Softmax"));
    }
}
