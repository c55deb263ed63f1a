//! 3×3, stride-1 convolutions by Winograd's minimal filtering F(2×2, 3×3): each
//! 2×2 block of outputs ("tile") from a 4×4 block of input in 16 multiplications per input
//! channel and filter instead of 36, so the products — nearly all of a 3×3 layer's time — do
//! 2.25× fewer operations (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
//! 2016).
//!
//! With the filters transformed once per call, `U = G·g·Gᵀ` (16 values per filter and input
//! channel), and the input tiles transformed, `V = Bᵀ·d·B`, the convolution becomes 16 independent
//! products `M[ξ] = U[ξ] · V[ξ]` (output channels × input channels times input channels × tiles),
//! and each output tile is `Aᵀ·m·A`. The tiles are transformed, multiplied and transformed back a
//! block at a time, so that `V` and `M` stay near the core (where im2col's `col(x)` for the same
//! outputs is 2.25× larger than `V`).
//!
//! The transforms' constants are 0, ±1 and ±½: F(2×2, 3×3) rounds about as a direct sum does
//! (larger tiles would save more multiplications but lose accuracy quickly).
//!
//! Training uses it for all three products of a layer: the forward; the input gradient, itself a
//! 3×3 stride-1 convolution ([`input_gradient_as_forward`]); and the weight gradient, by the
//! transposed algorithm ([`weight_gradient`]). ResNet-18 training at 224 px: +23–26 % img/s
//! (docs/PERFORMANCE.md, Change 14).

use std::mem::MaybeUninit;
use std::sync::Arc;

use gemm::Parallelism;
use rayon::prelude::*;

use crate::conv::{ConvGeometry, Epilogue, Scratch, View, multiply};
use crate::prepared::{Preparation, WeightsOwner, prepared};
use crate::simd::{assume_written, widest};

/// Tiles (columns of the 16 products) transformed and multiplied at a time: `V` and `M` of a
/// block take `16 × channels × tiles_per_block(g)` values each.
const TILES_PER_BLOCK: usize = 128;

/// Tiles per block for convolution `g`. In bfloat16, as many as keep a block's `V` and `M` at
/// 1 MB each (256 tiles at 64 channels, 128 at 128, never below 64): the transformed filters are
/// packed once per call there, so smaller blocks cost no repacking (ResNet-18's 128-channel
/// layers at 112 px: forward ~10 % faster at 128 tiles than at 256, the weight gradient level to
/// ~10 % faster; its 64-channel ones fastest at 256). In float32, 256 measured level with 128 per
/// layer on Zen 4 and was not tried on the 512 KB-L2 machine 128 was tuned on, so float32 keeps
/// 128.
fn tiles_per_block(g: &ConvGeometry) -> usize {
    if crate::bf16::enabled() {
        let channels = g.in_channels.max(g.out_channels).max(1);
        (2 * TILES_PER_BLOCK * 64 / channels).clamp(64, 2 * TILES_PER_BLOCK)
    } else {
        TILES_PER_BLOCK
    }
}

/// Extra values between the 16 points' matrices of a block: at exactly 32 KB apart (64 channels
/// × 128 tiles) the transforms' 16 streams would all fall in the same set of L1.
const STAGGER: usize = 16;

/// Values per transformed tile or filter.
const POINTS: usize = 16;

/// Whether [`forward`] computes this convolution: 3×3 filters at stride 1 without dilation, with
/// enough channels for the products to dominate (at 16 and 32 channels the forward measured
/// 15–110 % slower than direct, at 64 faster), planes of at least 16 tiles that cover them
/// closely (ResNet-18's 3×3 layers on 4×4 and 7×7 planes measured level or slower than direct),
/// and at least as many images as threads (the images are what the threads share; one image
/// keeps the direct path's sharing of its bands).
/// `DEEPTUNE_CONV=direct` in the environment turns it off (to compare, or to rule it out).
pub(crate) fn applies(g: &ConvGeometry) -> bool {
    g.kernel == [3, 3]
        && g.stride == [1, 1]
        && g.dilation == [1, 1]
        && g.padding[0] <= 2
        && g.padding[1] <= 2
        && g.in_channels >= 64
        && g.out_channels >= 64
        && tiles(g).0 * tiles(g).1 >= 16
        && tiles_cover_little_more(g)
        && g.batch >= rayon::current_num_threads()
        && enabled()
}

/// The input gradient of convolution `g` as a convolution that [`forward`] computes, where there is
/// one: its geometry (the output gradient in, the input gradient out) and its filters (`weight`
/// flipped in both axes, input and output channels swapped). For stride 1,
/// `dx[c][iy][ix] = Σ dy[o][iy + ky' − (2 − pad)][…] · w[o][c][2 − ky'][2 − kx']`.
pub(crate) fn input_gradient_as_forward(g: &ConvGeometry, weight: &[f32]) -> Option<(ConvGeometry, Scratch)> {
    let transposed = g.transposed_for_input_gradient().filter(|t| g.kernel == [3, 3] && applies(t))?;
    Some((transposed, g.flipped_filters(weight)))
}

/// Whether the convolutions may leave im2col for a faster path (this one, the tap-by-tap one of
/// `tapwise`, and the depthwise kernels' channels-interleaved one): unless `DEEPTUNE_CONV=direct` is set, read once per process.
pub(crate) fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("DEEPTUNE_CONV").map_or(true, |v| v != "direct"))
}

/// Whether the 2×2 tiles cover at most 15 % more outputs than the plane has: a 7×7 plane takes
/// 4×4 tiles (64 outputs for 49), and there ResNet's 3×3 layers measured no faster than direct.
fn tiles_cover_little_more(g: &ConvGeometry) -> bool {
    let (tile_rows, tile_cols) = tiles(g);
    100 * 4 * tile_rows * tile_cols <= 115 * g.out_plane()
}

/// The geometry's tiles: `(rows, columns)` of 2×2 output blocks per image (the last row or
/// column partial where the output side is odd).
fn tiles(g: &ConvGeometry) -> (usize, usize) {
    (g.out_h.div_ceil(2), g.out_w.div_ceil(2))
}

/// The convolution's output (`y`, `[batch, out_channels, out_h, out_w]`, written in full), with
/// `epilogue` applied to each group of images right after it is computed.
pub(crate) fn forward(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    y: &mut [MaybeUninit<f32>],
    epilogue: Option<&Epilogue>,
    owner: Option<&WeightsOwner>,
) {
    assert_eq!(y.len(), g.y_len(), "convolution output size");
    // In bfloat16 each point's filters packed once for every block of tiles and both threads —
    // and, where the weights have an owner (inference), once for every call.
    let pack = |u: &[f32]| {
        let cin = g.in_channels;
        let points: Vec<View> =
            (0..POINTS).map(|point| View { data: &u[point * cin..], row: POINTS * cin, col: 1 }).collect();
        crate::bf16::PackedLeft::many(g.out_channels, cin, &points)
    };
    let (u, packed) = match owner {
        Some(owner) => {
            let what = Preparation::Winograd { out_channels: g.out_channels, in_channels: g.in_channels };
            let packed = prepared(owner, weight, what, || {
                let packed = pack(&transformed_filters(g, weight));
                let bytes = packed.iter().map(crate::bf16::PackedLeft::bytes).sum();
                (packed, bytes)
            });
            (None, Some(packed))
        }
        None => {
            let u = transformed_filters(g, weight);
            let packed = crate::bf16::enabled().then(|| Arc::new(pack(&u)));
            (Some(u), packed)
        }
    };
    // With packed points the float32 filters are not read.
    let u: &[f32] = u.as_deref().unwrap_or(&[]);
    let (tile_rows, tile_cols) = tiles(g);
    let images_per_task = images_per_task(g, tile_rows * tile_cols);
    let (in_image, out_image) = (g.in_channels * g.in_plane(), g.out_channels * g.out_plane());
    y.par_chunks_mut(images_per_task * out_image).enumerate().for_each(|(task, y_task)| {
        let first = task * images_per_task;
        let images = y_task.len() / out_image;
        let x_task = &x[first * in_image..][..images * in_image];
        images_forward(g, x_task, u, packed.as_deref().map(Vec::as_slice), y_task, images);
        // SAFETY: `images_forward` wrote every output of these images.
        let y_task = unsafe { assume_written(y_task) };
        if let Some(epilogue) = epilogue {
            widest(
                #[inline(always)]
                || epilogue.apply(y_task, g.out_plane(), first * g.out_channels, g.out_channels),
            );
        }
    });
}

/// Images per parallel task: a divisor of each thread's share (so the threads get equal work)
/// whose tiles come closest to one block.
fn images_per_task(g: &ConvGeometry, tiles_per_image: usize) -> usize {
    let share = g.batch.div_ceil(rayon::current_num_threads().max(1));
    let wanted = tiles_per_block(g) as f64 / tiles_per_image.max(1) as f64;
    (1..=share)
        .filter(|&d| share.is_multiple_of(d))
        .min_by(|&a, &b| (a as f64 / wanted).ln().abs().total_cmp(&(b as f64 / wanted).ln().abs()))
        .unwrap_or(1)
}

/// `U = G·g·Gᵀ` for every filter `g` (output channel `o`, input channel `c`), laid out
/// `[out_channels][16][in_channels]`: point `ξ`'s matrix (output × input channels) is then a
/// strided view for the product, and each output channel's values are one contiguous part for a
/// thread to write. `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`.
fn transformed_filters(g: &ConvGeometry, weight: &[f32]) -> Scratch {
    let cin = g.in_channels;
    // Every value is written below. (A fresh 16 MB vector for 512 channels per call was mostly
    // page faults.)
    let mut u = Scratch::stale(g.out_channels * POINTS * cin);
    u.par_chunks_mut(POINTS * cin).enumerate().for_each(|(o, u_o)| {
        // The filters' taps by tap, `taps[k·cin + c]`, so that the transforms below run along
        // the input channels (vectorised) instead of one 3×3 filter at a time.
        let mut taps = Scratch::stale(9 * cin);
        for (c, filter) in weight[o * cin * 9..][..cin * 9].chunks_exact(9).enumerate() {
            for (k, &value) in filter.iter().enumerate() {
                taps[k * cin + c] = value;
            }
        }
        widest(
            #[inline(always)]
            || {
                // G·f (4×3) of each column of taps, then the same combinations of its columns:
                // (r0, ½(r0 + r1 + r2), ½(r0 − r1 + r2), r2).
                let mut gf = Scratch::stale(12 * cin);
                for col in 0..3 {
                    let (f0, f1, f2) =
                        (&taps[col * cin..][..cin], &taps[(3 + col) * cin..][..cin], &taps[(6 + col) * cin..][..cin]);
                    combine(f0, f1, f2, &mut gf, cin, |i| i * 3 + col);
                }
                for i in 0..4 {
                    let row = &gf[i * 3 * cin..][..3 * cin];
                    combine(&row[..cin], &row[cin..2 * cin], &row[2 * cin..], u_o, cin, |j| 4 * i + j);
                }
            },
        );
    });
    u
}

/// `(a, ½(a + b + c), ½(a − b + c), c)` along `len` values, the k-th to `out[slot(k)·len..]`.
#[inline(always)]
fn combine(a: &[f32], b: &[f32], c: &[f32], out: &mut [f32], len: usize, slot: impl Fn(usize) -> usize) {
    let (a, b, c) = (&a[..len], &b[..len], &c[..len]);
    out[slot(0) * len..][..len].copy_from_slice(a);
    out[slot(3) * len..][..len].copy_from_slice(c);
    for (t, value) in out[slot(1) * len..][..len].iter_mut().enumerate() {
        *value = 0.5 * (a[t] + b[t] + c[t]);
    }
    for (t, value) in out[slot(2) * len..][..len].iter_mut().enumerate() {
        *value = 0.5 * (a[t] - b[t] + c[t]);
    }
}

/// `images` consecutive images' outputs (`y`, written in full), a block of tile rows at a time.
fn images_forward(
    g: &ConvGeometry,
    x: &[f32],
    u: &[f32],
    packed: Option<&[crate::bf16::PackedLeft]>,
    y: &mut [MaybeUninit<f32>],
    images: usize,
) {
    let (cin, cout) = (g.in_channels, g.out_channels);
    let (tile_rows, tile_cols) = tiles(g);
    // Whole tile rows (of any of the images) per block, at least one.
    let rows_per_block = (tiles_per_block(g) / tile_cols).max(1);
    let all_rows = images * tile_rows;
    let most = rows_per_block * tile_cols;
    let mut v = Scratch::stale(POINTS * (cin * most + STAGGER));
    let mut m = Scratch::stale(POINTS * (cout * most + STAGGER));
    // One channel's patches, one array per position of the 4×4 patch, along the block's tiles.
    let mut patch = Scratch::stale(POINTS * most);
    // One input row with its padding, as far as the tiles of a row reach.
    let mut padded = Scratch::stale(2 * tile_cols + 2);
    let tile_row = |row: usize| (row / tile_rows, row % tile_rows);
    for first_row in (0..all_rows).step_by(rows_per_block) {
        let block_rows = rows_per_block.min(all_rows - first_row);
        let n = block_rows * tile_cols;
        let (v_stride, m_stride) = (cin * n + STAGGER, cout * n + STAGGER);
        let (v, m, patch) = (&mut v[..POINTS * v_stride], &mut m[..POINTS * m_stride], &mut patch[..POINTS * n]);
        widest(
            #[inline(always)]
            || {
                transform_input_block(
                    g,
                    x,
                    tile_row,
                    first_row..first_row + block_rows,
                    &mut padded,
                    patch,
                    v,
                    v_stride,
                );
            },
        );
        for point in 0..POINTS {
            let rhs = View { data: &v[point * v_stride..][..cin * n], row: n, col: 1 };
            let dst = &mut m[point * m_stride..][..cout * n];
            match packed {
                Some(packed) => crate::bf16::multiply_packed(n, dst, n, false, &packed[point], rhs),
                None => {
                    let lhs = View { data: &u[point * cin..], row: POINTS * cin, col: 1 };
                    multiply(cout, n, cin, dst, n, false, lhs, rhs, Parallelism::None)
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            assert!(m.len() >= (POINTS - 1) * m_stride + cout * n, "products' size");
            for o in 0..cout {
                for r in 0..block_rows {
                    let (image, row) = tile_row(first_row + r);
                    let plane = &mut y[(image * cout + o) * g.out_plane()..][..g.out_plane()];
                    // SAFETY: the CPU has AVX-512F; the tiles' 16 points at `o·n + r·tile_cols + t`
                    // (`t < tile_cols`), `m_stride` apart, are inside `m` (asserted above).
                    unsafe {
                        x86::transform_output_row(g, m.as_ptr().add(o * n + r * tile_cols), m_stride, row, plane)
                    };
                }
            }
            continue;
        }
        widest(
            #[inline(always)]
            || {
                for o in 0..cout {
                    transform_output(&m[o * n..], m_stride, patch, n);
                    for r in 0..block_rows {
                        let (image, row) = tile_row(first_row + r);
                        let plane = &mut y[(image * cout + o) * g.out_plane()..][..g.out_plane()];
                        scatter_output_tiles(g, patch, n, r * tile_cols, row, plane);
                    }
                }
            },
        );
    }
}

/// Whether [`weight_gradient`] computes this convolution's weight gradient: where [`forward`]
/// computes its output, with enough tiles in the batch to repay transforming the sums back (a
/// 512-channel layer's 16 sums of products are 16 MB per thread; at 4×4 pixels the batch has 64
/// tiles and the direct products win).
pub(crate) fn weight_gradient_applies(g: &ConvGeometry) -> bool {
    let (tile_rows, tile_cols) = tiles(g);
    applies(g) && g.batch * tile_rows * tile_cols >= 256
}

/// The weight gradient (`[out_channels, in_channels, 3, 3]`) of the convolution of `x` whose output
/// gradient is `dy`, by the transpose of F(2×2, 3×3): with `V = Bᵀ·d·B` of each input tile (as in
/// the forward) and `D = A·δ·Aᵀ` of each output tile's gradient δ (2×2 → 4×4), the 16 sums over
/// tiles `S[ξ] = D[ξ] · V[ξ]ᵀ` (output × input channels) give `dw = Gᵀ·S·G` for each filter.
pub(crate) fn weight_gradient(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (cin, cout) = (g.in_channels, g.out_channels);
    let threads = rayon::current_num_threads().max(1).min(g.batch.max(1));
    // Each thread sums its share of the images into its own S, then the sums are added.
    let shares: Vec<std::ops::Range<usize>> = (0..threads)
        .map(|part| part * g.batch / threads..(part + 1) * g.batch / threads)
        .filter(|images| !images.is_empty())
        .collect();
    let mut sums: Vec<Scratch> = shares.into_par_iter().map(|images| weight_gradient_sums(g, x, dy, images)).collect();
    let (first, rest) = sums.split_first_mut().expect("at least one image");
    first.par_chunks_mut(1 << 14).enumerate().for_each(|(chunk, total)| {
        for other in rest.iter() {
            let part = &other[chunk << 14..][..total.len()];
            total.iter_mut().zip(part).for_each(|(t, &p)| *t += p);
        }
    });
    let sums = &*first;
    let mut dw = Vec::with_capacity(cout * cin * 9);
    dw.spare_capacity_mut()[..cout * cin * 9].par_chunks_mut(cin * 9).enumerate().for_each(|(o, filters)| {
        for (c, filter) in filters.chunks_exact_mut(9).enumerate() {
            let s = |p: usize, q: usize| sums[((4 * p + q) * cout + o) * cin + c];
            // Gᵀ·S (3×4), then (Gᵀ·S)·G: rows (s0 + ½s1 + ½s2, ½s1 − ½s2, ½s1 + ½s2 + s3).
            let back =
                |s0: f32, s1: f32, s2: f32, s3: f32| [s0 + 0.5 * (s1 + s2), 0.5 * (s1 - s2), 0.5 * (s1 + s2) + s3];
            let columns: [[f32; 3]; 4] = std::array::from_fn(|q| back(s(0, q), s(1, q), s(2, q), s(3, q)));
            for a in 0..3 {
                let row = back(columns[0][a], columns[1][a], columns[2][a], columns[3][a]);
                for b in 0..3 {
                    filter[3 * a + b].write(row[b]);
                }
            }
        }
    });
    // SAFETY: the loop above wrote all 9 taps of every (output, input) channel pair.
    unsafe { dw.set_len(cout * cin * 9) };
    dw
}

/// `V` of one block: every input channel's 4×4 patches of the tiles in tile rows `rows` (block
/// rows, which `tile_row` maps to an image of `x` and a tile row in it) gathered into `patch` and
/// transformed into `v`, laid out `[16][channel][tile]` with the 16 points `v_stride` apart.
/// Inlined into the callers' `widest`, so that it is compiled for their vector width.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn transform_input_block(
    g: &ConvGeometry,
    x: &[f32],
    tile_row: impl Fn(usize) -> (usize, usize),
    rows: std::ops::Range<usize>,
    padded: &mut [f32],
    patch: &mut [f32],
    v: &mut [f32],
    v_stride: usize,
) {
    let tile_cols = tiles(g).1;
    let n = rows.len() * tile_cols;
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        assert!(v.len() >= (POINTS - 1) * v_stride + g.in_channels * n, "transformed input size");
        for c in 0..g.in_channels {
            for (r, block_row) in rows.clone().enumerate() {
                let (image, row) = tile_row(block_row);
                let plane = &x[(image * g.in_channels + c) * g.in_plane()..][..g.in_plane()];
                // SAFETY: the CPU has AVX-512F; the tiles' 16 points at `c·n + r·tile_cols + t`
                // (`t < tile_cols`), `v_stride` apart, are inside `v` (asserted above).
                unsafe { x86::transform_input_row(g, plane, row, v.as_mut_ptr().add(c * n + r * tile_cols), v_stride) };
            }
        }
        return;
    }
    transform_input_block_portable(g, x, tile_row, rows, padded, patch, v, v_stride);
}

/// [`transform_input_block`] without AVX-512: each channel's patches gathered a tile row at a
/// time, then transformed along the block's tiles.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn transform_input_block_portable(
    g: &ConvGeometry,
    x: &[f32],
    tile_row: impl Fn(usize) -> (usize, usize),
    rows: std::ops::Range<usize>,
    padded: &mut [f32],
    patch: &mut [f32],
    v: &mut [f32],
    v_stride: usize,
) {
    let tile_cols = tiles(g).1;
    let n = rows.len() * tile_cols;
    for c in 0..g.in_channels {
        for (r, block_row) in rows.clone().enumerate() {
            let (image, row) = tile_row(block_row);
            let plane = &x[(image * g.in_channels + c) * g.in_plane()..][..g.in_plane()];
            gather_input_patches(g, plane, row, padded, patch, n, r * tile_cols);
        }
        transform_input(patch, n, &mut v[c * n..], v_stride);
    }
}

/// `S[ξ] = Σ D[ξ] · V[ξ]ᵀ` over the tiles of `images`, laid out `[16][out_channels][in_channels]`.
fn weight_gradient_sums(g: &ConvGeometry, x: &[f32], dy: &[f32], images: std::ops::Range<usize>) -> Scratch {
    let (cin, cout) = (g.in_channels, g.out_channels);
    let (tile_rows, tile_cols) = tiles(g);
    let rows_per_block = (tiles_per_block(g) / tile_cols).max(1);
    let all_rows = images.len() * tile_rows;
    let most = rows_per_block * tile_cols;
    let mut sums = Scratch::stale(POINTS * cout * cin);
    let mut v = Scratch::stale(POINTS * (cin * most + STAGGER));
    let mut d = Scratch::stale(POINTS * (cout * most + STAGGER));
    let mut patch = Scratch::stale(POINTS * most);
    let mut padded = Scratch::stale(2 * tile_cols + 2);
    let tile_row = |row: usize| (images.start + row / tile_rows, row % tile_rows);
    for (block, first_row) in (0..all_rows).step_by(rows_per_block).enumerate() {
        let block_rows = rows_per_block.min(all_rows - first_row);
        let n = block_rows * tile_cols;
        let (v_stride, d_stride) = (cin * n + STAGGER, cout * n + STAGGER);
        let (v, d, patch) = (&mut v[..POINTS * v_stride], &mut d[..POINTS * d_stride], &mut patch[..POINTS * n]);
        widest(
            #[inline(always)]
            || {
                transform_input_block(
                    g,
                    x,
                    tile_row,
                    first_row..first_row + block_rows,
                    &mut padded,
                    patch,
                    v,
                    v_stride,
                );
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx512f") {
                    assert!(d.len() >= (POINTS - 1) * d_stride + cout * n, "transformed gradient size");
                    for o in 0..cout {
                        for r in 0..block_rows {
                            let (image, row) = tile_row(first_row + r);
                            let plane = &dy[(image * cout + o) * g.out_plane()..][..g.out_plane()];
                            let at = o * n + r * tile_cols;
                            // SAFETY: the CPU has AVX-512F; the tiles' 16 points at `at + t`
                            // (`t < tile_cols`), `d_stride` apart, are inside `d` (asserted above).
                            unsafe {
                                x86::transform_output_gradient_row(g, plane, row, d.as_mut_ptr().add(at), d_stride)
                            };
                        }
                    }
                    return;
                }
                for o in 0..cout {
                    for r in 0..block_rows {
                        let (image, row) = tile_row(first_row + r);
                        let plane = &dy[(image * cout + o) * g.out_plane()..][..g.out_plane()];
                        gather_output_tiles(g, plane, row, patch, n, r * tile_cols);
                    }
                    transform_output_gradient(patch, n, &mut d[o * n..], d_stride);
                }
            },
        );
        for point in 0..POINTS {
            // S[ξ] (out × in) += D[ξ] (out × tiles) · V[ξ]ᵀ (tiles × in).
            let lhs = View { data: &d[point * d_stride..][..cout * n], row: n, col: 1 };
            let rhs = View { data: &v[point * v_stride..][..cin * n], row: 1, col: n };
            let sum = &mut sums[point * cout * cin..][..cout * cin];
            multiply(cout, cin, n, sum, cin, block > 0, lhs, rhs, Parallelism::None);
        }
    }
    sums
}

/// The 2×2 output-gradient tiles in `tile_row` of one output `plane`, position `(p, q)` of tile
/// `t` to `patch[(2p + q)·n + at + t]` (zeros beyond an odd side).
#[inline(always)]
fn gather_output_tiles(g: &ConvGeometry, plane: &[f32], tile_row: usize, patch: &mut [f32], n: usize, at: usize) {
    let tile_cols = g.out_w.div_ceil(2);
    for p in 0..2 {
        let oy = 2 * tile_row + p;
        let (left, right) = patch[2 * p * n + at..].split_at_mut(n);
        let (left, right) = (&mut left[..tile_cols], &mut right[..tile_cols]);
        if oy >= g.out_h {
            left.fill(0.0);
            right.fill(0.0);
            continue;
        }
        let row = &plane[oy * g.out_w..][..g.out_w];
        let (pairs, last) = row.as_chunks::<2>();
        for (t, pair) in pairs.iter().enumerate() {
            left[t] = pair[0];
            right[t] = pair[1];
        }
        if let [single] = last {
            left[pairs.len()] = *single;
            right[pairs.len()] = 0.0;
        }
    }
}

/// `D = A·δ·Aᵀ` of `n` output-gradient tiles (`patch`, position `(p, q)` of tile `t` at
/// `[(2p + q)·n + t]`; `patch[4n..12n]` is overwritten on the way): point `ξ` of tile `t` to
/// `d[ξ·point_stride + t]`. `A = [[1, 0], [1, 1], [1, −1], [0, −1]]`.
#[inline(always)]
fn transform_output_gradient(patch: &mut [f32], n: usize, d: &mut [f32], point_stride: usize) {
    let (tiles, work) = patch.split_at_mut(4 * n);
    // A·δ: column q of the tile's rows (δ0q, δ0q + δ1q, δ0q − δ1q, −δ1q) to `work[(4q + i)·n..]`.
    for q in 0..2 {
        let (top, bottom) = (&tiles[q * n..][..n], &tiles[(2 + q) * n..][..n]);
        let rows = &mut work[4 * q * n..][..4 * n];
        let (r0, rest) = rows.split_at_mut(n);
        let (r1, rest) = rest.split_at_mut(n);
        let (r2, r3) = rest.split_at_mut(n);
        for t in 0..n {
            r0[t] = top[t];
            r1[t] = top[t] + bottom[t];
            r2[t] = top[t] - bottom[t];
            r3[t] = -bottom[t];
        }
    }
    // (A·δ)·Aᵀ: the same combinations of the two columns, for each row i.
    for i in 0..4 {
        let (c0, c1) = (&work[i * n..][..n], &work[(4 + i) * n..][..n]);
        let (d0, rest) = d[4 * i * point_stride..].split_at_mut(point_stride);
        let (d1, rest) = rest.split_at_mut(point_stride);
        let (d2, d3) = rest.split_at_mut(point_stride);
        let (d0, d1, d2, d3) = (&mut d0[..n], &mut d1[..n], &mut d2[..n], &mut d3[..n]);
        for t in 0..n {
            d0[t] = c0[t];
            d1[t] = c0[t] + c1[t];
            d2[t] = c0[t] - c1[t];
            d3[t] = -c1[t];
        }
    }
}

/// The 4×4 input patches of the tiles in `tile_row` of one input `plane`, position `(a, b)` of
/// tile `t` to `patch[(4a + b)·n + at + t]` (zeros in the padding). `padded` holds one input row
/// at a time with its padding, `2·tile_cols + 2` values: tile `t` reads its columns `2t..2t + 4`.
#[inline(always)]
fn gather_input_patches(
    g: &ConvGeometry,
    plane: &[f32],
    tile_row: usize,
    padded: &mut [f32],
    patch: &mut [f32],
    n: usize,
    at: usize,
) {
    let tile_cols = padded.len() / 2 - 1;
    let (pad_top, pad_left) = (g.padding[0], g.padding[1]);
    for a in 0..4 {
        let iy = (2 * tile_row + a) as isize - pad_top as isize;
        let (p0, rest) = patch[4 * a * n + at..].split_at_mut(n);
        let (p1, rest) = rest.split_at_mut(n);
        let (p2, p3) = rest.split_at_mut(n);
        let (p0, p1, p2, p3) = (&mut p0[..tile_cols], &mut p1[..tile_cols], &mut p2[..tile_cols], &mut p3[..tile_cols]);
        if iy < 0 || iy >= g.in_h as isize {
            for p in [p0, p1, p2, p3] {
                p.fill(0.0);
            }
            continue;
        }
        let row = &plane[iy as usize * g.in_w..][..g.in_w];
        let (start, end) = (pad_left.min(padded.len()), (pad_left + g.in_w).min(padded.len()));
        padded[..start].fill(0.0);
        padded[start..end].copy_from_slice(&row[..end - start]);
        padded[end..].fill(0.0);
        let (pairs, _) = padded.as_chunks::<2>();
        let (this, next) = (&pairs[..tile_cols], &pairs[1..=tile_cols]);
        for t in 0..tile_cols {
            p0[t] = this[t][0];
            p1[t] = this[t][1];
            p2[t] = next[t][0];
            p3[t] = next[t][1];
        }
    }
}

/// `V = Bᵀ·d·B` of `n` tiles' patches (`patch`, position `(a, b)` of tile `t` at
/// `[(4a + b)·n + t]`, overwritten): point `ξ` of tile `t` to `v[ξ·point_stride + t]`.
/// `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`.
#[inline(always)]
fn transform_input(patch: &mut [f32], n: usize, v: &mut [f32], point_stride: usize) {
    // Bᵀ·d, in place: rows (d0, d1, d2, d3) become (d0 − d2, d1 + d2, d2 − d1, d1 − d3).
    for b in 0..4 {
        let at = |a: usize| (4 * a + b) * n;
        let (d0, rest) = patch[at(0)..].split_at_mut(4 * n);
        let (d1, rest) = rest.split_at_mut(4 * n);
        let (d2, d3) = rest.split_at_mut(4 * n);
        let (d0, d1, d2, d3) = (&mut d0[..n], &mut d1[..n], &mut d2[..n], &mut d3[..n]);
        for t in 0..n {
            let (w, x, y, z) = (d0[t], d1[t], d2[t], d3[t]);
            d0[t] = w - y;
            d1[t] = x + y;
            d2[t] = y - x;
            d3[t] = x - z;
        }
    }
    // (Bᵀ·d)·B: the same combinations of the columns.
    for i in 0..4 {
        let row = &patch[4 * i * n..][..4 * n];
        let (e0, e1, e2, e3) = (&row[..n], &row[n..2 * n], &row[2 * n..3 * n], &row[3 * n..]);
        let (v0, rest) = v[4 * i * point_stride..].split_at_mut(point_stride);
        let (v1, rest) = rest.split_at_mut(point_stride);
        let (v2, v3) = rest.split_at_mut(point_stride);
        let (v0, v1, v2, v3) = (&mut v0[..n], &mut v1[..n], &mut v2[..n], &mut v3[..n]);
        for t in 0..n {
            v0[t] = e0[t] - e2[t];
            v1[t] = e1[t] + e2[t];
            v2[t] = e2[t] - e1[t];
            v3[t] = e1[t] - e3[t];
        }
    }
}

/// `Y = Aᵀ·m·A` of `n` tiles, point `ξ` of tile `t` read at `m[ξ·point_stride + t]`: output
/// `(p, q)` of tile `t` to `work[(8 + 2p + q)·n + t]` (`work[..8n]` is overwritten on the way).
/// `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]`.
#[inline(always)]
fn transform_output(m: &[f32], point_stride: usize, work: &mut [f32], n: usize) {
    let point = |i: usize, j: usize| &m[(4 * i + j) * point_stride..][..n];
    let (rows, out) = work.split_at_mut(8 * n);
    // Aᵀ·m: column j's output row 0 to `rows[j]`, row 1 to `rows[4 + j]`.
    for j in 0..4 {
        let (m0, m1, m2, m3) = (point(0, j), point(1, j), point(2, j), point(3, j));
        let (top, bottom) = rows.split_at_mut(4 * n);
        let (top, bottom) = (&mut top[j * n..][..n], &mut bottom[j * n..][..n]);
        for t in 0..n {
            top[t] = m0[t] + m1[t] + m2[t];
            bottom[t] = m1[t] - m2[t] - m3[t];
        }
    }
    // (Aᵀ·m)·A: the same combinations of the columns.
    for p in 0..2 {
        let row = &rows[4 * p * n..][..4 * n];
        let (c0, c1, c2, c3) = (&row[..n], &row[n..2 * n], &row[2 * n..3 * n], &row[3 * n..]);
        let (left, right) = out[2 * p * n..].split_at_mut(n);
        let right = &mut right[..n];
        for t in 0..n {
            left[t] = c0[t] + c1[t] + c2[t];
            right[t] = c1[t] - c2[t] - c3[t];
        }
    }
}

/// The output tiles in `tile_row` (their values at `out[(8 + 2p + q)·n + at + t]`, as
/// [`transform_output`] leaves them) written to the rows and columns of `plane` they cover.
#[inline(always)]
fn scatter_output_tiles(
    g: &ConvGeometry,
    out: &[f32],
    n: usize,
    at: usize,
    tile_row: usize,
    plane: &mut [MaybeUninit<f32>],
) {
    let tile_cols = g.out_w.div_ceil(2);
    for p in 0..2 {
        let oy = 2 * tile_row + p;
        if oy >= g.out_h {
            break;
        }
        let (left, right) = (&out[(8 + 2 * p) * n + at..][..tile_cols], &out[(9 + 2 * p) * n + at..][..tile_cols]);
        let row = &mut plane[oy * g.out_w..][..g.out_w];
        let (pairs, last) = row.as_chunks_mut::<2>();
        for (t, pair) in pairs.iter_mut().enumerate() {
            pair[0].write(left[t]);
            pair[1].write(right[t]);
        }
        if let [single] = last {
            single.write(left[pairs.len()]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::POINTS;
    use crate::conv::ConvGeometry;
    use crate::simd::x86::{even_odd, first_lanes};

    /// `V = Bᵀ·d·B` of the tiles in `tile_row` of one input `plane`, 16 tiles at a time in
    /// registers: point `ξ` of tile `t` to `v[ξ·point_stride + t]`. The same operations in the
    /// same order as [`super::gather_input_patches`] and [`super::transform_input`] (bit for bit
    /// their result), without their passes over a patch buffer: for a row of 14 tiles (a 28×28
    /// plane) those were 16 arrays of 14 values — vector remainders — each written and read
    /// three times, a fifth of ResNet-18's bfloat16 training step at 112 px outside the products.
    ///
    /// Tile `t` covers padded columns `2t..2t + 4`: with `E`/`O` the even/odd padded columns
    /// from `2t` and `E'`/`O'` those from `2t + 2`, a row's four points are `E − E'`, `O + E'`,
    /// `E' − O` and `O − O'`; rows combine first (`Bᵀ·d`), lane by lane.
    ///
    /// # Safety
    /// AVX-512F; `v` valid for writes at `ξ·point_stride + t` for `ξ < 16`, `t < tile_cols`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transform_input_row(
        g: &ConvGeometry,
        plane: &[f32],
        tile_row: usize,
        v: *mut f32,
        point_stride: usize,
    ) {
        assert!(plane.len() >= g.in_h * g.in_w, "input plane size");
        let tile_cols = g.out_w.div_ceil(2);
        let zero = _mm512_setzero_ps();
        for first in (0..tile_cols).step_by(16) {
            let store = first_lanes(tile_cols - first);
            // Per input row `a` of the tiles: [E, O, E', O'], zeros in the padding.
            let mut d = [[zero; 4]; 4];
            for (a, quantities) in d.iter_mut().enumerate() {
                let iy = (2 * tile_row + a) as isize - g.padding[0] as isize;
                if iy < 0 || iy >= g.in_h as isize {
                    continue;
                }
                let row = plane[iy as usize * g.in_w..].as_ptr();
                let start = (2 * first) as isize - g.padding[1] as isize;
                // SAFETY: the row holds `in_w` values.
                let ((e, o), (e2, o2)) = unsafe { (even_odd(row, start, g.in_w), even_odd(row, start + 2, g.in_w)) };
                *quantities = [e, o, e2, o2];
            }
            // Bᵀ·d: rows (d0, d1, d2, d3) → (d0 − d2, d1 + d2, d2 − d1, d1 − d3).
            let mut e = [[zero; 4]; 4];
            for k in 0..4 {
                let (d0, d1, d2, d3) = (d[0][k], d[1][k], d[2][k], d[3][k]);
                e[0][k] = _mm512_sub_ps(d0, d2);
                e[1][k] = _mm512_add_ps(d1, d2);
                e[2][k] = _mm512_sub_ps(d2, d1);
                e[3][k] = _mm512_sub_ps(d1, d3);
            }
            for (i, [even_cols, odd_cols, even_next, odd_next]) in e.into_iter().enumerate() {
                let points = [
                    _mm512_sub_ps(even_cols, even_next),
                    _mm512_add_ps(odd_cols, even_next),
                    _mm512_sub_ps(even_next, odd_cols),
                    _mm512_sub_ps(odd_cols, odd_next),
                ];
                for (j, point) in points.into_iter().enumerate() {
                    debug_assert!(4 * i + j < POINTS);
                    // SAFETY: tiles `first..first + 16` masked to `tile_cols` (the caller's bound).
                    unsafe { _mm512_mask_storeu_ps(v.add((4 * i + j) * point_stride + first), store, point) };
                }
            }
        }
    }

    /// `Y = Aᵀ·m·A` of the tiles in `tile_row` (point `ξ` of tile `t` read at
    /// `m[ξ·point_stride + t]`), 16 tiles at a time, written to the output rows and columns of
    /// `plane` they cover: the same operations in the same order as [`super::transform_output`]
    /// and [`super::scatter_output_tiles`] (bit for bit), without their buffer.
    ///
    /// # Safety
    /// AVX-512F; `m` valid for reads at `ξ·point_stride + t` for `ξ < 16`, `t < tile_cols`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transform_output_row(
        g: &ConvGeometry,
        m: *const f32,
        point_stride: usize,
        tile_row: usize,
        plane: &mut [std::mem::MaybeUninit<f32>],
    ) {
        assert!(plane.len() >= g.out_h * g.out_w, "output plane size");
        let tile_cols = g.out_w.div_ceil(2);
        // Output columns 2t and 2t + 1 side by side: tiles 0–7 of the left and right values, then 8–15.
        let low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        for first in (0..tile_cols).step_by(16) {
            let load = first_lanes(tile_cols - first);
            // SAFETY: tiles `first..first + 16` masked to `tile_cols` (the caller's bound).
            let point =
                |i: usize, j: usize| unsafe { _mm512_maskz_loadu_ps(load, m.add((4 * i + j) * point_stride + first)) };
            // Aᵀ·m: column j's output rows (m0j + m1j + m2j, m1j − m2j − m3j).
            let (mut top, mut bottom) = ([_mm512_setzero_ps(); 4], [_mm512_setzero_ps(); 4]);
            for (j, (top, bottom)) in top.iter_mut().zip(&mut bottom).enumerate() {
                let (m0, m1, m2, m3) = (point(0, j), point(1, j), point(2, j), point(3, j));
                *top = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                *bottom = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
            }
            for (p, [c0, c1, c2, c3]) in [top, bottom].into_iter().enumerate() {
                let oy = 2 * tile_row + p;
                if oy >= g.out_h {
                    break;
                }
                let left = _mm512_add_ps(_mm512_add_ps(c0, c1), c2);
                let right = _mm512_sub_ps(_mm512_sub_ps(c1, c2), c3);
                let x0 = 2 * first;
                let row = plane[oy * g.out_w..][..g.out_w].as_mut_ptr().cast::<f32>();
                let (low_count, high_count) = (g.out_w - x0, (g.out_w - x0).saturating_sub(16));
                // SAFETY: columns `x0..x0 + 32` masked to the row's `out_w`.
                unsafe {
                    _mm512_mask_storeu_ps(
                        row.add(x0),
                        first_lanes(low_count),
                        _mm512_permutex2var_ps(left, low, right),
                    );
                    if high_count > 0 {
                        _mm512_mask_storeu_ps(
                            row.add(x0 + 16),
                            first_lanes(high_count),
                            _mm512_permutex2var_ps(left, high, right),
                        );
                    }
                }
            }
        }
    }

    /// `D = A·δ·Aᵀ` of the output-gradient tiles in `tile_row` of one output-gradient `plane`,
    /// 16 tiles at a time: point `ξ` of tile `t` to `d[ξ·point_stride + t]`. The same operations
    /// in the same order as [`super::gather_output_tiles`] and
    /// [`super::transform_output_gradient`] (bit for bit), without their buffer.
    ///
    /// # Safety
    /// AVX-512F; `d` valid for writes at `ξ·point_stride + t` for `ξ < 16`, `t < tile_cols`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transform_output_gradient_row(
        g: &ConvGeometry,
        plane: &[f32],
        tile_row: usize,
        d: *mut f32,
        point_stride: usize,
    ) {
        assert!(plane.len() >= g.out_h * g.out_w, "output gradient plane size");
        let tile_cols = g.out_w.div_ceil(2);
        let zero = _mm512_setzero_ps();
        // −x exactly (0 − x would turn −0 into +0).
        let negate =
            |x: __m512| _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN)));
        for first in (0..tile_cols).step_by(16) {
            let store = first_lanes(tile_cols - first);
            // δ[p][q]: output row 2·tile_row + p, column 2t + q (zeros beyond the plane).
            let mut delta = [[zero; 2]; 2];
            for (p, values) in delta.iter_mut().enumerate() {
                let oy = 2 * tile_row + p;
                if oy >= g.out_h {
                    continue;
                }
                let row = plane[oy * g.out_w..].as_ptr();
                // SAFETY: the row holds `out_w` values.
                let (left, right) = unsafe { even_odd(row, (2 * first) as isize, g.out_w) };
                *values = [left, right];
            }
            // A·δ: column q's rows (δ0q, δ0q + δ1q, δ0q − δ1q, −δ1q).
            let [[top_left, top_right], [bottom_left, bottom_right]] = delta;
            let rows = |top, bottom| [top, _mm512_add_ps(top, bottom), _mm512_sub_ps(top, bottom), negate(bottom)];
            let (left, right) = (rows(top_left, bottom_left), rows(top_right, bottom_right));
            for (i, (c0, c1)) in left.into_iter().zip(right).enumerate() {
                let points = [c0, _mm512_add_ps(c0, c1), _mm512_sub_ps(c0, c1), negate(c1)];
                for (j, point) in points.into_iter().enumerate() {
                    // SAFETY: tiles `first..first + 16` masked to `tile_cols` (the caller's bound).
                    unsafe { _mm512_mask_storeu_ps(d.add((4 * i + j) * point_stride + first), store, point) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transformed input of every block of `g`'s first two images, by `transform`.
    fn transformed_blocks(
        g: &ConvGeometry,
        x: &[f32],
        transform: impl Fn(
            &ConvGeometry,
            &[f32],
            &dyn Fn(usize) -> (usize, usize),
            std::ops::Range<usize>,
            &mut [f32],
            usize,
        ),
    ) -> Vec<f32> {
        let (tile_rows, tile_cols) = tiles(g);
        let rows_per_block = 3;
        let all_rows = g.batch * tile_rows;
        let mut out = Vec::new();
        for first in (0..all_rows).step_by(rows_per_block) {
            let rows = first..(first + rows_per_block).min(all_rows);
            let n = rows.len() * tile_cols;
            let v_stride = g.in_channels * n + STAGGER;
            let mut v = vec![f32::NAN; POINTS * v_stride];
            transform(g, x, &|row| (row / tile_rows, row % tile_rows), rows, &mut v, v_stride);
            for point in v.chunks(v_stride) {
                out.extend_from_slice(&point[..g.in_channels * n]);
            }
        }
        out
    }

    /// A 3×3 convolution of one channel without padding whose output is `out_h × out_w`.
    fn one_plane(out_h: usize, out_w: usize) -> ConvGeometry {
        ConvGeometry {
            batch: 1,
            in_channels: 1,
            out_channels: 1,
            in_h: out_h + 2,
            in_w: out_w + 2,
            out_h,
            out_w,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
        }
    }

    #[test]
    fn the_vector_output_transform_is_the_portable_one_bit_for_bit() {
        for [out_h, out_w] in [[7, 9], [28, 28], [14, 14], [5, 37], [3, 64], [4, 33]] {
            let g = one_plane(out_h, out_w);
            let (tile_rows, tile_cols) = tiles(&g);
            let n = tile_rows * tile_cols;
            let m_stride = n + STAGGER;
            let m: Vec<f32> = (0..POINTS * m_stride).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0).collect();
            let sentinel = std::mem::MaybeUninit::new(f32::NAN);
            let (mut vector, mut portable) = (vec![sentinel; out_h * out_w], vec![sentinel; out_h * out_w]);
            let mut work = vec![0.0; 12 * n];
            transform_output(&m, m_stride, &mut work, n);
            for row in 0..tile_rows {
                scatter_output_tiles(&g, &work, n, row * tile_cols, row, &mut portable);
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: AVX-512F; the row's tiles are inside `m`.
                    unsafe {
                        x86::transform_output_row(&g, m.as_ptr().add(row * tile_cols), m_stride, row, &mut vector)
                    };
                } else {
                    scatter_output_tiles(&g, &work, n, row * tile_cols, row, &mut vector);
                }
            }
            for (i, (a, b)) in vector.iter().zip(&portable).enumerate() {
                // SAFETY: both planes were initialised (NaN where nothing was written).
                let (a, b) = unsafe { (a.assume_init(), b.assume_init()) };
                assert!(!b.is_nan(), "{out_h}×{out_w}: output {i} not written");
                assert_eq!(a.to_bits(), b.to_bits(), "{out_h}×{out_w}: output {i} is {a}, not {b}");
            }
        }
    }

    #[test]
    fn the_vector_output_gradient_transform_is_the_portable_one_bit_for_bit() {
        for [out_h, out_w] in [[7, 9], [28, 28], [14, 14], [5, 37], [3, 64], [4, 33]] {
            let g = one_plane(out_h, out_w);
            let (tile_rows, tile_cols) = tiles(&g);
            let n = tile_rows * tile_cols;
            let d_stride = n + STAGGER;
            // Signed zeros among the values: the transform's negations must keep their sign.
            let dy: Vec<f32> = (0..out_h * out_w)
                .map(|i| if i % 5 == 0 { -0.0 } else { ((i * 7919 % 1000) as f32 - 500.0) / 37.0 })
                .collect();
            let (mut vector, mut portable) = (vec![f32::NAN; POINTS * d_stride], vec![f32::NAN; POINTS * d_stride]);
            let mut patch = vec![0.0; 12 * n];
            for row in 0..tile_rows {
                gather_output_tiles(&g, &dy, row, &mut patch, n, row * tile_cols);
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: AVX-512F; the row's tiles are inside `vector`.
                    unsafe {
                        x86::transform_output_gradient_row(
                            &g,
                            &dy,
                            row,
                            vector.as_mut_ptr().add(row * tile_cols),
                            d_stride,
                        )
                    };
                }
            }
            transform_output_gradient(&mut patch, n, &mut portable, d_stride);
            if !std::is_x86_feature_detected!("avx512f") {
                vector.clone_from(&portable);
            }
            for point in 0..POINTS {
                for t in 0..n {
                    let (a, b) = (vector[point * d_stride + t], portable[point * d_stride + t]);
                    assert_eq!(a.to_bits(), b.to_bits(), "{out_h}×{out_w}: point {point} of tile {t} is {a}, not {b}");
                }
            }
        }
    }

    #[test]
    fn the_vector_input_transform_is_the_portable_one_bit_for_bit() {
        // Planes of one to three blocks of 16 tiles a row, odd sides, every padding the path takes.
        let cases = [([9, 7], [1, 1]), ([28, 28], [1, 1]), ([14, 14], [0, 2]), ([40, 37], [2, 1]), ([66, 70], [1, 0])];
        for ([h, w], padding) in cases {
            let out = |size: usize, pad: usize| size + 2 * pad - 2;
            let g = ConvGeometry {
                batch: 2,
                in_channels: 3,
                out_channels: 1,
                in_h: h,
                in_w: w,
                out_h: out(h, padding[0]),
                out_w: out(w, padding[1]),
                kernel: [3, 3],
                stride: [1, 1],
                padding,
                dilation: [1, 1],
            };
            let x: Vec<f32> = (0..g.x_len()).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0).collect();
            let tile_cols = tiles(&g).1;
            let vector = transformed_blocks(&g, &x, |g, x, tile_row, rows, v, v_stride| {
                let mut padded = vec![0.0; 2 * tile_cols + 2];
                let mut patch = vec![0.0; POINTS * rows.len() * tile_cols];
                widest(|| transform_input_block(g, x, tile_row, rows, &mut padded, &mut patch, v, v_stride));
            });
            let portable = transformed_blocks(&g, &x, |g, x, tile_row, rows, v, v_stride| {
                let mut padded = vec![0.0; 2 * tile_cols + 2];
                let mut patch = vec![0.0; POINTS * rows.len() * tile_cols];
                transform_input_block_portable(g, x, tile_row, rows, &mut padded, &mut patch, v, v_stride);
            });
            assert_eq!(vector.len(), portable.len());
            for (i, (a, b)) in vector.iter().zip(&portable).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{h}×{w}, padding {padding:?}: value {i} is {a}, not {b}");
            }
        }
    }
}
