//! Our own CPU kernels for the layers where burn's `flex` backend is slowest in training, plugged
//! into burn through its backend-extension mechanism: a trait on the backend ([`DeepKernels`]),
//! implemented for flex with these kernels, for CUDA with burn's own operations, and for
//! autodiff with a custom backward node. Models call the [`depthwise_conv2d`] wrapper; which
//! implementation runs follows the tensors' device.
//!
//! [`depthwise`], [`conv`], [`batchnorm`], [`maxpool`] and [`optim`] (fused optimizer steps) hold
//! the kernels themselves, on plain slices, testable without burn; `conv` hands its 3×3 stride-1
//! shapes to Winograd's algorithm (`winograd`), or on planes of 5×5 and less to products tap by
//! tap that skip the padding (`tapwise`).

pub mod batchnorm;
pub mod bf16;
pub mod conv;
pub mod depthwise;
mod ext;
pub mod maxpool;
pub mod optim;
mod prepared;
mod simd;
mod tapwise;
mod winograd;

pub use conv::EpilogueActivation;
pub use ext::{
    DeepKernels, adamw_step, batch_norm_residual_training, batch_norm_training, conv2d_scale_shift, dense_conv2d,
    depthwise_conv2d, is_depthwise, lamb_step, max_pool2d, relu, relu6, sgd_step, silu,
};
pub use optim::{AdamWStep, LambStep, SgdStep};
pub use prepared::drop_unused as drop_unused_prepared_filters;
