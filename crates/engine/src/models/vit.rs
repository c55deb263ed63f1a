//! torchvision's VisionTransformer (ViT-B/16, ViT-B/32 and any size), with torchvision's
//! parameter names: `class_token`, `conv_proj`, `encoder.pos_embedding`,
//! `encoder.layers.encoder_layer_N.{ln_1, self_attention, ln_2, mlp}`, `encoder.ln`, `heads.head`.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Dropout, DropoutConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{gelu, softmax};

use crate::nn::conv_forward;
use crate::torch::TorchModel;

pub const LN_EPS: f64 = 1e-6;

#[derive(Debug, Clone)]
pub struct VitConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub hidden_dim: usize,
    pub mlp_dim: usize,
    pub num_classes: usize,
    /// Dropout after the position embedding, the attention and in the MLP (torchvision: 0).
    pub dropout: f64,
    /// Dropout on the attention weights (torchvision: 0).
    pub attention_dropout: f64,
}

impl VitConfig {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        image_size: usize,
        patch_size: usize,
        num_layers: usize,
        num_heads: usize,
        hidden_dim: usize,
        mlp_dim: usize,
        num_classes: usize,
    ) -> Self {
        VitConfig {
            image_size,
            patch_size,
            num_layers,
            num_heads,
            hidden_dim,
            mlp_dim,
            num_classes,
            dropout: 0.0,
            attention_dropout: 0.0,
        }
    }

    pub fn b_16(num_classes: usize) -> Self {
        Self::new(224, 16, 12, 12, 768, 3072, num_classes)
    }

    pub fn b_32(num_classes: usize) -> Self {
        Self::new(224, 32, 12, 12, 768, 3072, num_classes)
    }

    /// Tokens the encoder sees: the patches and the class token.
    pub fn seq_length(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }

    /// Width of the features the head sees.
    pub fn feature_dim(&self) -> usize {
        self.hidden_dim
    }

    pub fn init(&self, device: &Device) -> VisionTransformer {
        assert!(self.image_size.is_multiple_of(self.patch_size), "image size must be divisible by the patch size");
        assert!(self.hidden_dim.is_multiple_of(self.num_heads), "hidden_dim must be divisible by num_heads");
        let d = self.hidden_dim;
        let p = self.patch_size;
        // torchvision: trunc_normal_(std = √(1/fan_in)) (truncated at ±2, far beyond that std), bias 0.
        let fan_in = 3 * p * p;
        let mut conv_proj = Conv2dConfig::new([3, d], [p, p])
            .with_stride([p, p])
            .with_initializer(Initializer::Normal { mean: 0.0, std: (1.0 / fan_in as f64).sqrt() })
            .init(device);
        conv_proj.bias = Some(Initializer::Zeros.init([d], device));
        // torchvision zero-initialises the head.
        let head = LinearConfig::new(d, self.num_classes).with_initializer(Initializer::Zeros).init(device);
        VisionTransformer {
            class_token: Initializer::Zeros.init([1, 1, d], device),
            conv_proj,
            encoder: Encoder {
                pos_embedding: Initializer::Normal { mean: 0.0, std: 0.02 }.init([1, self.seq_length(), d], device),
                dropout: DropoutConfig::new(self.dropout).init(),
                layers: (0..self.num_layers).map(|_| EncoderBlock::new(self, device)).collect(),
                ln: layer_norm(d, device),
            },
            heads: Heads { head },
            patch_size: p,
            hidden_dim: d,
        }
    }
}

fn layer_norm(d: usize, device: &Device) -> LayerNorm {
    LayerNormConfig::new(d).with_epsilon(LN_EPS).init(device)
}

/// `torch.nn.MultiheadAttention` (batch first, self-attention), with its parameter layout:
/// `in_proj_weight` `[3D, D]` (PyTorch's `[out, in]`: q, k, v stacked), `in_proj_bias` `[3D]`,
/// `out_proj` a Linear.
#[derive(Module, Debug)]
pub struct SelfAttention {
    pub in_proj_weight: Param<Tensor<2>>,
    pub in_proj_bias: Param<Tensor<1>>,
    pub out_proj: Linear,
    pub dropout: Dropout,
    pub num_heads: usize,
}

impl SelfAttention {
    fn new(d: usize, num_heads: usize, attention_dropout: f64, device: &Device) -> Self {
        SelfAttention {
            // PyTorch: xavier_uniform_ on the stacked [3D, D] matrix, zero biases.
            in_proj_weight: Initializer::XavierUniform { gain: 1.0 }.init_with(
                [3 * d, d],
                Some(d),
                Some(3 * d),
                device,
            ),
            in_proj_bias: Initializer::Zeros.init([3 * d], device),
            out_proj: {
                let mut linear = LinearConfig::new(d, d).init(device);
                linear.bias = Some(Initializer::Zeros.init([d], device));
                linear
            },
            dropout: DropoutConfig::new(attention_dropout).init(),
            num_heads,
        }
    }

    /// `x`: `[batch, tokens, D]`; softmax(q kᵀ / √head_dim) v over the keys, per head.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, tokens, d] = x.dims();
        let heads = self.num_heads;
        let head_dim = d / heads;
        let qkv =
            x.matmul(self.in_proj_weight.val().transpose().unsqueeze::<3>()) + self.in_proj_bias.val().unsqueeze::<3>();
        // [batch, tokens, 3, heads, head_dim] → [3, batch, heads, tokens, head_dim]
        let qkv = qkv.reshape([batch, tokens, 3, heads, head_dim]).permute([2, 0, 3, 1, 4]);
        let part = |i: usize| -> Tensor<4> { qkv.clone().narrow(0, i, 1).reshape([batch, heads, tokens, head_dim]) };
        let (q, k, v) = (part(0), part(1), part(2));
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(1.0 / (head_dim as f64).sqrt());
        let weights = self.dropout.forward(softmax(scores, 3));
        let context = weights.matmul(v).swap_dims(1, 2).reshape([batch, tokens, d]);
        self.out_proj.forward(context)
    }
}

/// torchvision's `MLPBlock`: Linear (`0`), GELU, Dropout (`2`), Linear (`3`), Dropout (`4`).
#[derive(Module, Debug)]
pub struct Mlp {
    pub _0: Linear,
    pub _2: Dropout,
    pub _3: Linear,
    pub _4: Dropout,
}

impl Mlp {
    fn new(d: usize, mlp_dim: usize, dropout: f64, device: &Device) -> Self {
        // torchvision: xavier_uniform_ weights, normal(std=1e-6) biases.
        let linear = |d_in: usize, d_out: usize| {
            let mut linear =
                LinearConfig::new(d_in, d_out).with_initializer(Initializer::XavierUniform { gain: 1.0 }).init(device);
            linear.bias = Some(Initializer::Normal { mean: 0.0, std: 1e-6 }.init([d_out], device));
            linear
        };
        Mlp {
            _0: linear(d, mlp_dim),
            _2: DropoutConfig::new(dropout).init(),
            _3: linear(mlp_dim, d),
            _4: DropoutConfig::new(dropout).init(),
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self._2.forward(gelu(self._0.forward(x)));
        self._4.forward(self._3.forward(x))
    }
}

/// torchvision's `EncoderBlock` (pre-norm).
#[derive(Module, Debug)]
pub struct EncoderBlock {
    pub ln_1: LayerNorm,
    pub self_attention: SelfAttention,
    pub dropout: Dropout,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

impl EncoderBlock {
    fn new(config: &VitConfig, device: &Device) -> Self {
        let d = config.hidden_dim;
        EncoderBlock {
            ln_1: layer_norm(d, device),
            self_attention: SelfAttention::new(d, config.num_heads, config.attention_dropout, device),
            dropout: DropoutConfig::new(config.dropout).init(),
            ln_2: layer_norm(d, device),
            mlp: Mlp::new(d, config.mlp_dim, config.dropout, device),
        }
    }

    pub fn forward(&self, input: Tensor<3>) -> Tensor<3> {
        let x = self.dropout.forward(self.self_attention.forward(self.ln_1.forward(input.clone()))) + input;
        let y = self.mlp.forward(self.ln_2.forward(x.clone()));
        x + y
    }
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub pos_embedding: Param<Tensor<3>>,
    pub dropout: Dropout,
    pub layers: Vec<EncoderBlock>,
    pub ln: LayerNorm,
}

impl Encoder {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let mut x = self.dropout.forward(x + self.pos_embedding.val());
        for layer in &self.layers {
            x = layer.forward(x);
        }
        self.ln.forward(x)
    }
}

/// `heads`: a Sequential holding `head`.
#[derive(Module, Debug)]
pub struct Heads {
    pub head: Linear,
}

#[derive(Module, Debug)]
pub struct VisionTransformer {
    pub class_token: Param<Tensor<3>>,
    pub conv_proj: Conv2d,
    pub encoder: Encoder,
    pub heads: Heads,
    pub patch_size: usize,
    pub hidden_dim: usize,
}

impl VisionTransformer {
    /// The class token's final representation: `[batch, hidden_dim]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let [batch, _, height, width] = x.dims();
        let p = self.patch_size;
        let seq = self.encoder.pos_embedding.lazy_shape()[1];
        assert!(
            height % p == 0 && width % p == 0 && (height / p) * (width / p) + 1 == seq,
            "ViT expects {0}×{0} patches of {p} pixels; got an image of {height}×{width}",
            ((seq - 1) as f64).sqrt() as usize,
        );
        let d = self.hidden_dim;
        // [batch, D, h, w] → [batch, h·w, D]
        let x = conv_forward(&self.conv_proj, x).reshape([batch, d, seq - 1]).swap_dims(1, 2);
        let class_token = self.class_token.val().expand([batch, 1, d]);
        let x = self.encoder.forward(Tensor::cat(vec![class_token, x], 1));
        x.narrow(1, 0, 1).reshape([batch, d])
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.heads.head.forward(self.features(x))
    }
}

impl TorchModel for VisionTransformer {
    /// burn names the encoder's layers `encoder.layers.<i>`; torchvision `encoder_layer_<i>`.
    fn torch_key(path: String) -> String {
        match path.strip_prefix("encoder.layers.") {
            Some(rest) => format!("encoder.layers.encoder_layer_{rest}"),
            None => path,
        }
    }

    fn head_prefixes() -> &'static [&'static str] {
        &["heads."]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_is_softmax_of_scaled_dot_products() {
        // One head, D = 2, identity projections: attention weights softmax(x xᵀ / √2).
        let device = Device::flex();
        let mut attn = SelfAttention::new(2, 1, 0.0, &device);
        let eye: Vec<f32> = vec![1., 0., 0., 1., 1., 0., 0., 1., 1., 0., 0., 1.];
        attn.in_proj_weight = Param::from_tensor(Tensor::from_data(TensorData::new(eye, [6, 2]), &device));
        attn.out_proj.weight =
            Param::from_tensor(Tensor::from_data(TensorData::new(vec![1f32, 0., 0., 1.], [2, 2]), &device));
        let x = Tensor::<3>::from_data(TensorData::new(vec![1f32, 0., 0., 2.], [1, 2, 2]), &device);
        let out: Vec<f32> = attn.forward(x).into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        let s = 1.0 / 2f32.sqrt();
        // token 0: scores [1, 0]·s; token 1: scores [0, 4]·s
        let w0 = [s.exp() / (s.exp() + 1.0), 1.0 / (s.exp() + 1.0)];
        let e4 = (4.0 * s).exp();
        let w1 = [1.0 / (1.0 + e4), e4 / (1.0 + e4)];
        let expected = [w0[0], 2.0 * w0[1], w1[0], 2.0 * w1[1]];
        for (a, b) in out.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "{out:?} vs {expected:?}");
        }
    }

    #[test]
    fn encoder_layer_keys_are_renamed() {
        assert_eq!(
            VisionTransformer::torch_key("encoder.layers.3.ln_1.weight".into()),
            "encoder.layers.encoder_layer_3.ln_1.weight"
        );
        assert_eq!(VisionTransformer::torch_key("encoder.ln.weight".into()), "encoder.ln.weight");
    }
}
