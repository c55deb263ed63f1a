//! Depthwise 2-D convolution backward on plain `f32` slices (NCHW, contiguous): the input and
//! weight gradients of a convolution whose every channel has its own filter (groups == channels
//! in == channels out), as MobileNet and EfficientNet use in every block.
//!
//! burn computes these generically: the input gradient as a grouped transposed convolution and
//! the weight gradient as one small convolution per group, so a 960-channel layer runs 960
//! separate convolutions. Here each is one pass over the data, parallel over planes (input
//! gradient) or channels (weight gradient), with the innermost loop along a row so it vectorises.

// The geometry is a `ConvGeometry` with `in_channels` == `out_channels` (= the channels) and
// filters `[channels, 1, kh, kw]`.

use rayon::prelude::*;

use crate::conv::ConvGeometry;
use crate::simd::{lane_sum, widest};

/// Gradient of the loss with respect to the input, `[batch, channels, in_h, in_w]`, from the
/// filters `[channels, kh, kw]` and the output gradient `[batch, channels, out_h, out_w]`.
pub fn input_grad(g: &ConvGeometry, weight: &[f32], out_grad: &[f32]) -> Vec<f32> {
    assert_eq!(weight.len(), g.in_channels * g.taps(), "depthwise weight size");
    assert_eq!(out_grad.len(), g.batch * g.in_channels * g.out_plane(), "depthwise output-gradient size");
    let mut grad = vec![0.0f32; g.batch * g.in_channels * g.in_plane()];
    if grad.is_empty() {
        return grad;
    }
    grad.par_chunks_mut(g.in_plane()).enumerate().for_each(|(plane, gx)| {
        widest(|| {
            let channel = plane % g.in_channels;
            let gy = &out_grad[plane * g.out_plane()..(plane + 1) * g.out_plane()];
            let w = &weight[channel * g.taps()..(channel + 1) * g.taps()];
            for i in 0..g.kernel[0] {
                let rows = g.valid(0, i, g.out_h, g.in_h);
                for j in 0..g.kernel[1] {
                    let tap = w[i * g.kernel[1] + j];
                    let cols = g.valid(1, j, g.out_w, g.in_w);
                    if cols.is_empty() {
                        continue;
                    }
                    let first_col = g.input_index(1, j, cols.start);
                    for oh in rows.clone() {
                        let ih = g.input_index(0, i, oh);
                        let gy_row = &gy[oh * g.out_w + cols.start..oh * g.out_w + cols.end];
                        let gx_row = &mut gx[ih * g.in_w..(ih + 1) * g.in_w];
                        if g.stride[1] == 1 {
                            let gx_run = &mut gx_row[first_col..first_col + gy_row.len()];
                            for (x, &y) in gx_run.iter_mut().zip(gy_row) {
                                *x += tap * y;
                            }
                        } else {
                            for (k, &y) in gy_row.iter().enumerate() {
                                gx_row[first_col + k * g.stride[1]] += tap * y;
                            }
                        }
                    }
                }
            }
        })
    });
    grad
}

/// Gradient of the loss with respect to the filters, `[channels, kh, kw]`, from the input
/// `[batch, channels, in_h, in_w]` and the output gradient. Sums over the batch and positions
/// in `f64` per row, so the result does not depend on how the work is split.
pub fn weight_grad(g: &ConvGeometry, input: &[f32], out_grad: &[f32]) -> Vec<f32> {
    assert_eq!(input.len(), g.batch * g.in_channels * g.in_plane(), "depthwise input size");
    assert_eq!(out_grad.len(), g.batch * g.in_channels * g.out_plane(), "depthwise output-gradient size");
    let mut grad = vec![0.0f32; g.in_channels * g.taps()];
    if grad.is_empty() {
        return grad;
    }
    grad.par_chunks_mut(g.taps()).enumerate().for_each(|(channel, gw)| {
        widest(|| {
            let mut sums = vec![0.0f64; g.taps()];
            for n in 0..g.batch {
                let plane = n * g.in_channels + channel;
                let x = &input[plane * g.in_plane()..(plane + 1) * g.in_plane()];
                let gy = &out_grad[plane * g.out_plane()..(plane + 1) * g.out_plane()];
                for i in 0..g.kernel[0] {
                    let rows = g.valid(0, i, g.out_h, g.in_h);
                    for j in 0..g.kernel[1] {
                        let cols = g.valid(1, j, g.out_w, g.in_w);
                        if cols.is_empty() {
                            continue;
                        }
                        let first_col = g.input_index(1, j, cols.start);
                        let mut acc = 0.0f64;
                        for oh in rows.clone() {
                            let ih = g.input_index(0, i, oh);
                            let gy_row = &gy[oh * g.out_w + cols.start..oh * g.out_w + cols.end];
                            let x_row = &x[ih * g.in_w..(ih + 1) * g.in_w];
                            acc += if g.stride[1] == 1 {
                                lane_sum(&x_row[first_col..first_col + gy_row.len()], gy_row, |a, b| a * b)
                            } else {
                                gy_row
                                    .iter()
                                    .enumerate()
                                    .map(|(k, &y)| y * x_row[first_col + k * g.stride[1]])
                                    .sum::<f32>() as f64
                            };
                        }
                        sums[i * g.kernel[1] + j] += acc;
                    }
                }
            }
            for (out, sum) in gw.iter_mut().zip(sums) {
                *out = sum as f32;
            }
        })
    });
    grad
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one multiply-add at a time, in f64.
    fn naive(g: &ConvGeometry, x: &[f32], w: &[f32], gy: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let mut gx = vec![0.0f64; x.len()];
        let mut gw = vec![0.0f64; w.len()];
        for n in 0..g.batch {
            for c in 0..g.in_channels {
                for oh in 0..g.out_h {
                    for ow in 0..g.out_w {
                        let y = gy[((n * g.in_channels + c) * g.out_h + oh) * g.out_w + ow] as f64;
                        for i in 0..g.kernel[0] {
                            for j in 0..g.kernel[1] {
                                let ih = (oh * g.stride[0] + i * g.dilation[0]) as isize - g.padding[0] as isize;
                                let iw = (ow * g.stride[1] + j * g.dilation[1]) as isize - g.padding[1] as isize;
                                if ih < 0 || iw < 0 || ih >= g.in_h as isize || iw >= g.in_w as isize {
                                    continue;
                                }
                                let xi = ((n * g.in_channels + c) * g.in_h + ih as usize) * g.in_w + iw as usize;
                                let wi = (c * g.kernel[0] + i) * g.kernel[1] + j;
                                gx[xi] += y * w[wi] as f64;
                                gw[wi] += y * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
        (gx.into_iter().map(|v| v as f32).collect(), gw.into_iter().map(|v| v as f32).collect())
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn check(
        kernel: usize,
        stride: usize,
        padding: [usize; 2],
        dilation: usize,
        size: [usize; 2],
        pad_end: [usize; 2],
    ) {
        let out =
            |len: usize, axis: usize| (len + padding[axis] + pad_end[axis] - dilation * (kernel - 1) - 1) / stride + 1;
        let g = ConvGeometry {
            batch: 2,
            in_channels: 3,
            out_channels: 3,
            in_h: size[0],
            in_w: size[1],
            out_h: out(size[0], 0),
            out_w: out(size[1], 1),
            kernel: [kernel, kernel],
            stride: [stride, stride],
            padding,
            dilation: [dilation, dilation],
        };
        let x = values(g.batch * g.in_channels * g.in_plane(), 1);
        let w = values(g.in_channels * g.taps(), 2);
        let gy = values(g.batch * g.in_channels * g.out_plane(), 3);
        let (gx_ref, gw_ref) = naive(&g, &x, &w, &gy);
        let gx = input_grad(&g, &w, &gy);
        let gw = weight_grad(&g, &x, &gy);
        for (a, b) in gx.iter().zip(&gx_ref) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "input grad {a} vs {b} for {g:?}");
        }
        for (a, b) in gw.iter().zip(&gw_ref) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "weight grad {a} vs {b} for {g:?}");
        }
    }

    #[test]
    fn gradients_match_the_definition() {
        check(3, 1, [1, 1], 1, [7, 6], [1, 1]); // MobileNetV2's stride-1 3×3
        check(3, 2, [1, 1], 1, [8, 9], [1, 1]); // its stride-2 3×3
        check(5, 1, [2, 2], 1, [6, 6], [2, 2]); // EfficientNet's 5×5
        check(5, 2, [1, 1], 1, [9, 8], [2, 2]); // TensorFlow "same": more padding at the end
        check(3, 1, [2, 2], 2, [7, 7], [2, 2]); // dilated
        check(3, 2, [0, 0], 1, [3, 4], [0, 0]); // one output row and column
        check(1, 1, [0, 0], 1, [3, 4], [0, 0]);
    }
}
