//! Dense (`groups` = 1) 2-D convolution on plain `f32` slices (NCHW, contiguous), forward and
//! backward, as im2col plus one well-shaped matrix product per chunk of images.
//!
//! Why not burn's: flex's forward multiplies one tile of at most 512 output pixels of one image at
//! a time, so late layers (7×7 or 4×4 pixels) give the matrix product a 49- or 16-column operand;
//! and burn computes the backward generically — the input gradient as a transposed convolution,
//! the weight gradient as a convolution over swapped dimensions whose "output" is the 3×3 kernel,
//! i.e. a 9-column product per input channel. Those narrow products ran gemm's edge microkernel
//! for about a third of a ResNet-18 training step. Here every product has the layer's channels on
//! one side and at least [`TARGET_COLUMNS`] pixels (several images side by side where one image
//! has fewer) on the other — and one image whose plane is much wider (56×56 and up) is cut into
//! bands of output rows of about that many pixels, so that its `col(x)` stays near the core:
//!
//! - forward: `y = W · col(x)`,
//! - input gradient: `col2im(Wᵀ · dy)`,
//! - weight gradient: `Σ dy · col(x)ᵀ` over chunks, one partial sum per worker thread.
//!
//! `W` is PyTorch's `[out, in, kh, kw]` read as an `[out, in·kh·kw]` matrix, so the rows of
//! `col(x)` are ordered (input channel, kernel row, kernel column) and no weight is reshuffled.
//!
//! 3×3 stride-1 shapes go elsewhere where that measured faster: Winograd's algorithm (`winograd`)
//! on planes of 16 tiles and more, products tap by tap that skip the padding (`tapwise`) on
//! planes of 5×5 and less.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};

use gemm::Parallelism;

use rayon::prelude::*;

use std::sync::Arc;

use crate::bf16;
use crate::prepared::{Preparation, WeightsOwner, prepared};
use crate::simd::{assume_written, widest, zeroed};

/// Pixels (columns of the products) a chunk of images aims for: below a few hundred, gemm's
/// packing and edge kernels dominate; above, the im2col buffer stops fitting in L2.
const TARGET_COLUMNS: usize = 512;

/// An image whose output plane has more pixels than this is multiplied in bands of output rows
/// of about [`TARGET_COLUMNS`] pixels each: a whole 56×56 plane's `col(x)` under a 3×3 filter
/// over 64 channels is 7 MB, written out of cache and read back by gemm's packing. (28×28 planes
/// in two bands of 392 pixels also measured a few per cent faster than whole.)
const BAND_ABOVE_COLUMNS: usize = TARGET_COLUMNS + TARGET_COLUMNS / 4;

/// Rows of `col(x)` (input channels × taps) built and multiplied at a time, in a chunk of several
/// images or a band of one: 64 channels of a 3×3 filter. The whole `col(x)` of ResNet-18's 256-channel 3×3 layer
/// over 8 images of 7×7 is 3.6 MB, written out of cache by im2col and read back by gemm's
/// packing; a block of it (0.9 MB at most, one pass of gemm's depth blocking) is still near the
/// core when gemm reads it, and its product accumulates into the same output.
const BLOCK_ROWS: usize = 576;

/// The shape of one dense convolution: input `[batch, in_channels, in_h, in_w]`, filters
/// `[out_channels, in_channels, kernel_h, kernel_w]`, output `[batch, out_channels, out_h, out_w]`.
/// Padding is the number of zero rows/columns before the first input row/column (what comes
/// after is implied by the output size, so asymmetric "same" padding is covered too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
}

impl ConvGeometry {
    /// A convolution of square `side × side` images by square `kernel × kernel` filters, the same
    /// stride and padding on both axes, no dilation (as the benchmarks and most tests use).
    pub fn square(
        batch: usize,
        [in_channels, out_channels]: [usize; 2],
        side: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> ConvGeometry {
        let out = (side + 2 * padding - kernel) / stride + 1;
        ConvGeometry {
            batch,
            in_channels,
            out_channels,
            in_h: side,
            in_w: side,
            out_h: out,
            out_w: out,
            kernel: [kernel, kernel],
            stride: [stride, stride],
            padding: [padding, padding],
            dilation: [1, 1],
        }
    }

    pub(crate) fn in_plane(&self) -> usize {
        self.in_h * self.in_w
    }

    pub(crate) fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Taps per filter.
    pub(crate) fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    /// Output positions along `axis` (0 rows, 1 columns) whose input position for `tap` falls
    /// inside `0..len`.
    pub(crate) fn valid(&self, axis: usize, tap: usize, out_len: usize, len: usize) -> std::ops::Range<usize> {
        valid_outputs(self.stride[axis], tap * self.dilation[axis], self.padding[axis], out_len, len)
    }

    /// The input position along `axis` that output `o` reads for `tap` (inside the input: see
    /// [`ConvGeometry::valid`]).
    /// For a stride-1 convolution whose output rows are as long as the input's ("same" width),
    /// output `i` of tap `(ky, kx)` reads input `i + shift` of the flattened plane wherever it
    /// reads inside the plane: whole runs of rows are then one copy. `None` for other shapes.
    pub(crate) fn flat_shift(&self, ky: usize, kx: usize) -> Option<isize> {
        (self.stride == [1, 1] && self.in_w == self.out_w).then(|| {
            let dy = (ky * self.dilation[0]) as isize - self.padding[0] as isize;
            let dx = (kx * self.dilation[1]) as isize - self.padding[1] as isize;
            dy * self.in_w as isize + dx
        })
    }

    /// The kernel tap that reads every output's own pixel — the centre of a stride-1 "same"
    /// convolution — if there is one: its row of `col(x)` is the input plane itself.
    fn identity_tap(&self) -> Option<(usize, usize)> {
        if self.stride != [1, 1] || self.in_h != self.out_h || self.in_w != self.out_w {
            return None;
        }
        let tap = |axis: usize| {
            let (k, d, p) = (self.kernel[axis], self.dilation[axis], self.padding[axis]);
            (p % d == 0 && p / d < k).then_some(p / d)
        };
        Some((tap(0)?, tap(1)?))
    }

    pub(crate) fn input_index(&self, axis: usize, tap: usize, o: usize) -> usize {
        (o * self.stride[axis] + tap * self.dilation[axis]) - self.padding[axis]
    }

    /// The band of output rows `rows` of one image as a convolution of its own: the input rows
    /// those outputs read (the first of which is returned with it), with the padding above moved
    /// to where the band starts. Its `col(x)` is the band's columns of the whole image's.
    fn output_rows(&self, rows: std::ops::Range<usize>) -> (ConvGeometry, usize) {
        let (stride, reach, pad) = (self.stride[0], (self.kernel[0] - 1) * self.dilation[0], self.padding[0]);
        // The input row (possibly in the padding, then negative) the band's first output reads
        // with its first tap, and the one past the last output's last tap.
        let top = (rows.start * stride) as isize - pad as isize;
        let bottom = (rows.end.max(rows.start + 1) - 1) * stride + reach + 1;
        let first = top.max(0) as usize;
        let end = bottom.saturating_sub(pad).min(self.in_h).max(first);
        let band = ConvGeometry {
            batch: 1,
            in_h: end - first,
            out_h: rows.len(),
            padding: [(first as isize - top) as usize, self.padding[1]],
            ..*self
        };
        (band, first)
    }

    /// Whether one image is multiplied in bands of output rows ([`BAND_ABOVE_COLUMNS`]).
    fn in_bands(&self, images: usize) -> bool {
        images == 1 && !self.is_pointwise() && self.out_plane() > BAND_ABOVE_COLUMNS
    }

    /// The bands of output rows, about [`TARGET_COLUMNS`] pixels each; their number rounded up to
    /// a multiple of `parts` where they are shared between that many threads (7 bands of a 56×56
    /// plane on 2 threads would leave one idle for the seventh).
    fn bands(&self, parts: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
        let count = self.out_plane().div_ceil(TARGET_COLUMNS).next_multiple_of(parts.max(1));
        let count = count.clamp(1, self.out_h.max(1));
        let rows = self.out_h.div_ceil(count).max(1);
        let out_h = self.out_h;
        (0..out_h).step_by(rows).map(move |start| start..(start + rows).min(out_h))
    }

    /// The input channels in blocks of at most [`BLOCK_ROWS`] rows of `col(x)` (one channel per
    /// block where a single channel has more taps than that).
    fn channel_blocks(&self) -> impl Iterator<Item = std::ops::Range<usize>> {
        let per_block = (BLOCK_ROWS / self.taps().max(1)).max(1);
        let channels = self.in_channels;
        (0..channels).step_by(per_block).map(move |c| c..(c + per_block).min(channels))
    }

    /// Rows of `col(x)` in the largest of [`Self::channel_blocks`] (the first).
    fn block_rows(&self) -> usize {
        self.channel_blocks().next().map_or(0, |channels| channels.len() * self.taps())
    }

    /// This convolution over `channels` of its input channels: its `col(x)` is their rows of the
    /// whole `col(x)`, its filters their columns of the whole filters.
    fn over_channels(&self, channels: &std::ops::Range<usize>) -> ConvGeometry {
        ConvGeometry { in_channels: channels.len(), ..*self }
    }

    /// Rows of `col(x)`: one per (input channel, kernel tap).
    fn patch_len(&self) -> usize {
        self.in_channels * self.kernel[0] * self.kernel[1]
    }

    /// A 1×1 convolution with stride 1 and no padding: one image's input already is its `col`.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1]
            && self.stride == [1, 1]
            && self.padding == [0, 0]
            && self.out_h == self.in_h
            && self.out_w == self.in_w
    }

    /// The convolution whose forward is this one's input gradient, where there is one: for
    /// stride 1 without dilation and padding below the kernel on each axis,
    /// `dx[c][iy][ix] = Σ dy[o][iy + k' − (K − 1 − p)][…] · w[o][c][K − 1 − k'][…]` — a forward
    /// over the output gradient (output channels in, input channels out, padding `K − 1 − p`)
    /// with the filters of [`ConvGeometry::flipped_filters`]. Its output covers the input exactly
    /// (the padding after is implied by the sizes, as for every geometry here).
    pub(crate) fn transposed_for_input_gradient(&self) -> Option<ConvGeometry> {
        let fits = |axis: usize| self.padding[axis] < self.kernel[axis];
        (self.stride == [1, 1] && self.dilation == [1, 1] && fits(0) && fits(1)).then(|| ConvGeometry {
            in_channels: self.out_channels,
            out_channels: self.in_channels,
            in_h: self.out_h,
            in_w: self.out_w,
            out_h: self.in_h,
            out_w: self.in_w,
            padding: [self.kernel[0] - 1 - self.padding[0], self.kernel[1] - 1 - self.padding[1]],
            ..*self
        })
    }

    /// The filters of [`ConvGeometry::transposed_for_input_gradient`]: `weight` (`[out, in, kh,
    /// kw]`) with input and output channels swapped and each filter rotated by 180°.
    pub(crate) fn flipped_filters(&self, weight: &[f32]) -> Scratch {
        let (cin, cout, taps) = (self.in_channels, self.out_channels, self.taps());
        assert_eq!(weight.len(), self.weight_len(), "convolution weight size");
        // Every value is written below; a pooled buffer, not a fresh one per call (2.4 MB for a
        // 256-channel 3×3 layer: its page faults cost about as much as the flipping).
        let mut flipped = Scratch::stale(weight.len());
        flipped.par_chunks_mut(cout * taps).enumerate().for_each(|(c, filters)| {
            for (o, filter) in filters.chunks_exact_mut(taps).enumerate() {
                let original = &weight[(o * cin + c) * taps..][..taps];
                for (k, value) in filter.iter_mut().enumerate() {
                    *value = original[taps - 1 - k];
                }
            }
        });
        flipped
    }

    /// Values in the input.
    pub fn x_len(&self) -> usize {
        self.batch * self.in_channels * self.in_plane()
    }

    /// Values in the output.
    pub fn y_len(&self) -> usize {
        self.batch * self.out_channels * self.out_plane()
    }

    /// Values in the filters.
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.patch_len()
    }
}

/// Output positions `o` along one axis whose input position `o·stride + tap_offset − padding`
/// falls inside `0..len`, as a range of `o` (`tap_offset` is the tap's index times the dilation).
pub(crate) fn valid_outputs(
    stride: usize,
    tap_offset: usize,
    padding: usize,
    out_len: usize,
    len: usize,
) -> std::ops::Range<usize> {
    let (stride, offset) = (stride as isize, tap_offset as isize - padding as isize);
    // o·stride + offset ≥ 0  ⇔  o ≥ ceil(−offset / stride)
    let first = if offset >= 0 { 0 } else { ((-offset) + stride - 1) / stride } as usize;
    // o·stride + offset ≤ len − 1  ⇔  o ≤ floor((len − 1 − offset) / stride)
    let last_excl =
        if (len as isize - 1 - offset) < 0 { 0 } else { ((len as isize - 1 - offset) / stride + 1) as usize };
    first.min(out_len)..last_excl.min(out_len).max(first.min(out_len))
}

/// How the batch is cut into chunks of images and who computes them.
#[derive(Debug, Clone, Copy)]
struct Plan {
    images_per_chunk: usize,
    chunks: usize,
    /// Chunks run on the rayon pool, each product on one thread; otherwise (fewer chunks than
    /// threads, e.g. batch 1) chunks run in turn and each product uses the whole pool.
    chunks_in_parallel: bool,
}

impl Plan {
    fn new(g: &ConvGeometry) -> Plan {
        let threads = rayon::current_num_threads().max(1);
        let batch = g.batch.max(1);
        // Enough images to reach the target width, but never so many that a thread idles; and
        // a divisor of each thread's share, so that the chunks split evenly between threads
        // (14×14 planes in batches of 16 made chunks of 3, 3, 3, 3, 3, 1 images: one thread
        // computed 9 images while the other waited after 7).
        let share = batch.div_ceil(threads);
        let wanted = TARGET_COLUMNS as f64 / g.out_plane().max(1) as f64;
        let images_per_chunk = (1..=share)
            .filter(|&d| share.is_multiple_of(d))
            .min_by(|&a, &b| (a as f64 / wanted).ln().abs().total_cmp(&(b as f64 / wanted).ln().abs()))
            .unwrap_or(1);
        let chunks = batch.div_ceil(images_per_chunk);
        Plan { images_per_chunk, chunks, chunks_in_parallel: chunks >= threads && threads > 1 }
    }

    fn images(&self, chunk: usize, batch: usize) -> std::ops::Range<usize> {
        let start = chunk * self.images_per_chunk;
        start..(start + self.images_per_chunk).min(batch)
    }

    fn product_parallelism(&self) -> Parallelism {
        if self.chunks_in_parallel { Parallelism::None } else { Parallelism::Rayon(0) }
    }
}

/// Buffers a thread keeps for reuse. A backward chunk holds up to three buffers, plus a
/// weight-gradient accumulator or two.
const POOLED_BUFFERS: usize = 6;

thread_local! {
    /// Buffers a thread used before and will likely need again at the same sizes, each
    /// initialised in full (its `len` is every value ever written, not what its last user asked).
    static SCRATCH_POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A work buffer borrowed from this thread's pool and returned to it when dropped.
///
/// Why: a fresh multi-megabyte `vec!` per image and layer is a fresh `mmap`; its pages fault in
/// on first touch, and zeroed ones read before written are copy-on-write faults with a TLB
/// shootdown across cores — a fifth of a ResNet-18 step in the profile.
pub(crate) struct Scratch {
    /// The caller's values (`len` as asked); its first `initialised` values were all written.
    buf: Vec<f32>,
    initialised: usize,
}

impl Scratch {
    /// `len` values left over from earlier use: only for buffers that are written in full before
    /// they are read.
    ///
    /// The smallest pooled buffer with room for `len` values, else a new one (the pooled ones
    /// stay for smaller requests). Taking the last one returned, as a first version did, grew
    /// small buffers into large ones — zeroing and copying — while the large ones waited in the
    /// pool: 1.4 % of ResNet-18's bfloat16 training step at 112 px, in `memset` and `realloc`.
    pub(crate) fn stale(len: usize) -> Scratch {
        let mut buf = SCRATCH_POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            let fits = (0..pool.len()).filter(|&i| pool[i].capacity() >= len).min_by_key(|&i| pool[i].capacity());
            fits.map(|i| pool.swap_remove(i)).unwrap_or_else(|| Vec::with_capacity(len))
        });
        // Pooled buffers keep every value ever written in their length.
        let initialised = buf.len().max(len);
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        buf.truncate(len);
        Scratch { buf, initialised }
    }
}

// `Deref` to the `Vec`'s own slice: kernels index scratch buffers in their inner loops, where a
// re-slicing per access (a first version kept the length apart) cost a bounds test each.
impl Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        // SAFETY: the first `initialised` values were written (by `stale` or an earlier user), and
        // the capacity holds them (it was never shrunk).
        unsafe { buf.set_len(self.initialised) };
        SCRATCH_POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOLED_BUFFERS {
                pool.push(buf);
            } else if let Some(smallest) = (0..pool.len()).min_by_key(|&i| pool[i].capacity()) {
                // A full pool keeps the larger buffers: a small one is cheap to make again.
                if pool[smallest].capacity() < buf.capacity() {
                    pool[smallest] = buf;
                }
            }
        });
    }
}

/// A zero-filled result vector whose zeros are written, not `calloc`ed: the kernel's first touch
/// of a page then faults once, instead of mapping the shared zero page and copying it on write.
fn written_zeros(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    v.resize(len, 0.0);
    v
}

/// A row-major or transposed view of a matrix in a slice: element `(r, c)` at `r·row + c·col`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) row: usize,
    pub(crate) col: usize,
}

/// `dst (m×n, row stride dst_row) = [dst +] lhs (m×k) · rhs (k×n)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn multiply(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_row: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * dst_row + n <= dst.len(), "product destination too small");
    // SAFETY: the destination's bounds were just checked; `dst` is borrowed mutably, so nothing
    // else reads or writes it meanwhile.
    unsafe { multiply_raw(m, n, k, dst.as_mut_ptr(), dst_row, accumulate, lhs, rhs, parallelism) }
}

/// `dst (m×n, contiguous) = lhs · rhs` into memory not yet written, returned written. Neither
/// gemm (with `read_dst` false its first block of `k` stores, later blocks add to what it stored)
/// nor [`crate::bf16::multiply_with`] reads a destination it does not accumulate into, so it needs no
/// zeros first (a `memset` of every such destination before).
#[allow(clippy::too_many_arguments)]
pub(crate) fn multiply_into<'a>(
    m: usize,
    n: usize,
    k: usize,
    dst: &'a mut [MaybeUninit<f32>],
    lhs: View,
    rhs: View,
    parallelism: Parallelism,
) -> &'a mut [f32] {
    assert_eq!(dst.len(), m * n, "product destination size");
    // SAFETY: the destination's bounds were just checked, it is borrowed mutably, and a product
    // that does not accumulate only writes it before reading it (`multiply_raw`'s contract).
    unsafe { multiply_raw(m, n, k, dst.as_mut_ptr().cast(), n, false, lhs, rhs, parallelism) };
    // SAFETY: the product wrote all `m × n` values (zeros where `k` is 0).
    unsafe { assume_written(dst) }
}

/// Zeros in `n` values of each of `m` rows `dst_row` apart (a product over an empty `k`).
///
/// # Safety
/// `dst + r·dst_row + c` for `r < m`, `c < n` must be valid for writes.
pub(crate) unsafe fn zero_rows(m: usize, n: usize, dst: *mut f32, dst_row: usize) {
    for r in 0..m {
        // SAFETY: row `r`'s `n` values are the caller's to write (all-zero bits are 0.0).
        unsafe { std::ptr::write_bytes(dst.add(r * dst_row), 0, n) };
    }
}

/// [`multiply`] into a destination given by pointer, for products whose rows interleave with
/// other threads' (bands of one image: each band's columns of every output plane).
///
/// # Safety
/// `dst + r·dst_row + c` for `r < m`, `c < n` must be valid `f32`s that nothing else reads or
/// writes during the call, initialised where `accumulate` (otherwise they are only written
/// before they are read).
#[allow(clippy::too_many_arguments)]
unsafe fn multiply_raw(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_row: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if bf16::enabled() {
        let (left, right) = (bf16::Left::View(lhs), bf16::Right::View(rhs));
        // SAFETY: `multiply_with` checks the operands' bounds; the destination is the caller's
        // (this function's contract, which is `multiply_with`'s).
        return unsafe { bf16::multiply_with(m, n, k, dst, dst_row, accumulate, left, right) };
    }
    // The operands' bounds gemm will read, checked here so that the call below is sound.
    if k > 0 {
        assert!((m - 1) * lhs.row + (k - 1) * lhs.col < lhs.data.len(), "left operand too small");
        assert!((k - 1) * rhs.row + (n - 1) * rhs.col < rhs.data.len(), "right operand too small");
    } else if !accumulate {
        // SAFETY: the destination's rows are the caller's to write.
        unsafe { zero_rows(m, n, dst, dst_row) };
        return;
    }
    // SAFETY: every index gemm reads is within the operands (asserted above); the destination is
    // the caller's (this function's contract) and aliases neither operand, which are shared
    // borrows.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col as isize,
            lhs.row as isize,
            rhs.data.as_ptr(),
            rhs.col as isize,
            rhs.row as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Zeros after each phase plane, read by the last partial vector of a flat filter.
pub(crate) const PHASE_TAIL: usize = 16;

/// The zero-padded input plane cut into `stride[0]·stride[1]` phase planes, so that every tap of
/// the filter reads a contiguous run: phase `(py, px)` holds padded rows `py, py + sh, …` and
/// columns `px, px + sw, …`. Output `(oy, ox)` then reads tap `(ky, kx)` at row
/// `oy + ky·dh / sh`, column `ox + kx·dw / sw` of phase `(ky·dh % sh, kx·dw % sw)`, and with
/// every phase `cols` wide, output `oy·cols + ox` of a "wide" plane reads phase value
/// `oy·cols + ox + offset(tap)`: a 1-D filter over the flattened plane, vectorised across rows.
/// The wide plane's last `cols − out_w` columns of each row are discarded.
pub(crate) struct PhaseLayout {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// Values per phase: `rows·cols`, then zeros that the discarded columns of the last rows and
    /// the last partial vector read past the end.
    pub(crate) phase_len: usize,
    /// Where each tap (row-major over the filter) starts reading in the phase buffer.
    pub(crate) offsets: Vec<usize>,
}

impl PhaseLayout {
    pub(crate) fn new(g: &ConvGeometry) -> PhaseLayout {
        let ([sh, sw], [dh, dw]) = (g.stride, g.dilation);
        let rows = g.out_h + (g.kernel[0] - 1) * dh / sh;
        let cols = g.out_w + (g.kernel[1] - 1) * dw / sw;
        let phase_len = rows * cols + cols + PHASE_TAIL;
        let mut offsets = Vec::with_capacity(g.taps());
        for ky in 0..g.kernel[0] {
            for kx in 0..g.kernel[1] {
                let (ry, rx) = (ky * dh, kx * dw);
                let phase = (ry % sh) * sw + rx % sw;
                offsets.push(phase * phase_len + (ry / sh) * cols + rx / sw);
            }
        }
        PhaseLayout { rows, cols, phase_len, offsets }
    }

    pub(crate) fn len(&self, g: &ConvGeometry) -> usize {
        g.stride[0] * g.stride[1] * self.phase_len
    }

    /// The wide output plane, rounded up to whole vectors.
    pub(crate) fn wide_len(&self, g: &ConvGeometry) -> usize {
        (g.out_h * self.cols).next_multiple_of(PHASE_TAIL)
    }

    /// A phase buffer of zeros for [`PhaseLayout::fill`]: its padding and tails are never
    /// written, so one buffer serves every plane of the geometry without being cleared again
    /// (a plane's padding used to be a few tiny `memset`s per row, every plane).
    pub(crate) fn zeros(&self, g: &ConvGeometry) -> Scratch {
        let mut buf = Scratch::stale(self.len(g));
        buf.fill(0.0);
        buf
    }

    /// Writes the phases of one input plane into `buf`, a buffer from [`PhaseLayout::zeros`] for
    /// this geometry: only the values inside the plane are written, the rest stay zero.
    #[inline(always)]
    pub(crate) fn fill(&self, g: &ConvGeometry, plane: &[f32], buf: &mut [f32]) {
        debug_assert_eq!(buf.len(), self.len(g), "a phase buffer of this layout");
        let ([sh, sw], [pad_h, pad_w]) = (g.stride, g.padding);
        for (phase, dst) in buf.chunks_exact_mut(self.phase_len).enumerate() {
            let (py, px) = (phase / sw, phase % sw);
            // Phase columns `c` whose input column `px + sw·c − pad_w` is inside the plane.
            let first = pad_w.saturating_sub(px).div_ceil(sw).min(self.cols);
            let end = (g.in_w + pad_w).saturating_sub(px).div_ceil(sw).clamp(first, self.cols);
            if first == end {
                continue;
            }
            for (r, row) in dst[..self.rows * self.cols].chunks_exact_mut(self.cols).enumerate() {
                let y = (py + sh * r).wrapping_sub(pad_h);
                if y >= g.in_h {
                    continue;
                }
                let src = &plane[y * g.in_w..(y + 1) * g.in_w];
                let x0 = px + sw * first - pad_w;
                let n = end - first;
                // The exact span read, so that the compiler drops the bounds checks and
                // vectorises the strided read (stride 2: interleaved loads and a shuffle).
                let span = &src[x0..x0 + (n - 1) * sw + 1];
                let row = &mut row[first..end];
                if sw == 1 {
                    row.copy_from_slice(span);
                } else if sw == 2 {
                    // Pairs of known length: no bounds checks, and the even values of
                    // whole vectors come out of one shuffle.
                    let (last, head) = row.split_last_mut().expect("a non-empty run");
                    head.iter_mut().zip(span.chunks_exact(2)).for_each(|(v, pair)| *v = pair[0]);
                    *last = span[span.len() - 1];
                } else {
                    (0..n).for_each(|k| row[k] = span[k * sw]);
                }
            }
        }
    }
}

/// Writes one image's `col(x)` (`patch_len` rows of `out_plane` values) into `col`, row `r`
/// starting at `r · row_stride`. Taps that fall in the padding read as 0.
///
/// Stride-1 "same"-width convolutions copy whole runs of rows per tap ([`copy_shifted`]); the
/// others first cut each input plane into its [`PhaseLayout`] (padding materialised, stride-2
/// columns deinterleaved), so that every output row of every tap is one contiguous copy — the
/// stem's 7×7 stride-2 convolution used to gather every value with a stride.
///
/// Input channel `c`'s plane starts at `image[c · channel_stride]` (`in_plane` for a whole image;
/// more for a band of rows cut out of one, see [`ConvGeometry::output_rows`]).
fn im2col(g: &ConvGeometry, image: &[f32], channel_stride: usize, col: &mut [f32], row_stride: usize) {
    if g.flat_shift(0, 0).is_some() {
        widest(
            #[inline(always)]
            || im2col_shifted(g, image, channel_stride, col, row_stride),
        )
    } else {
        let layout = PhaseLayout::new(g);
        let mut phases = layout.zeros(g);
        widest(
            #[inline(always)]
            || im2col_phases(g, &layout, &mut phases, image, channel_stride, col, row_stride),
        )
    }
}

#[inline(always)]
fn im2col_shifted(g: &ConvGeometry, image: &[f32], channel_stride: usize, col: &mut [f32], row_stride: usize) {
    let [kh, kw] = g.kernel;
    let in_plane = g.in_plane();
    for channel in 0..g.in_channels {
        let plane = &image[channel * channel_stride..][..in_plane];
        for ky in 0..kh {
            let rows = valid_outputs(g.stride[0], ky * g.dilation[0], g.padding[0], g.out_h, g.in_h);
            for kx in 0..kw {
                let cols = valid_outputs(g.stride[1], kx * g.dilation[1], g.padding[1], g.out_w, g.in_w);
                let row = (channel * kh + ky) * kw + kx;
                let dst = &mut col[row * row_stride..][..g.out_plane()];
                let shift = g.flat_shift(ky, kx).expect("a stride-1 same-width convolution");
                copy_shifted(g, plane, dst, shift, rows.clone(), cols);
            }
        }
    }
}

#[inline(always)]
fn im2col_phases(
    g: &ConvGeometry,
    layout: &PhaseLayout,
    phases: &mut [f32],
    image: &[f32],
    channel_stride: usize,
    col: &mut [f32],
    row_stride: usize,
) {
    let (in_plane, out_w, taps) = (g.in_plane(), g.out_w, g.taps());
    for channel in 0..g.in_channels {
        layout.fill(g, &image[channel * channel_stride..][..in_plane], phases);
        for (tap, &offset) in layout.offsets.iter().enumerate() {
            let dst = &mut col[(channel * taps + tap) * row_stride..][..g.out_plane()];
            for (oy, out) in dst.chunks_exact_mut(out_w).enumerate() {
                out.copy_from_slice(&phases[offset + oy * layout.cols..][..out_w]);
            }
        }
    }
}

/// The part of `dst` (one row of `col(x)`, `out_h × out_w`) that [`ConvGeometry::flat_shift`]
/// maps onto the input plane: the valid `rows` copied in one run from `plane` at `shift`, then
/// the padding — rows outside `rows`, columns outside `cols` — written as 0.
#[inline(always)]
fn copy_shifted(
    g: &ConvGeometry,
    plane: &[f32],
    dst: &mut [f32],
    shift: isize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    let w = g.out_w;
    let (head, rest) = dst.split_at_mut(rows.start * w);
    let (block, tail) = rest.split_at_mut(rows.len() * w);
    head.fill(0.0);
    tail.fill(0.0);
    let (lo, hi) = shifted_run(g, rows.start * w, block.len(), shift);
    block[..lo].fill(0.0);
    block[hi..].fill(0.0);
    // An empty run may start outside the plane (a 1×1 input under a padded 3×3 filter).
    if lo < hi {
        block[lo..hi].copy_from_slice(&plane[(((rows.start * w + lo) as isize) + shift) as usize..][..hi - lo]);
    }
    zero_outside_columns(block, w, cols);
}

/// Zeroes the columns outside `cols` in every row (`w` wide) of `block`. Almost always one column
/// on either side (a 3×3 filter with padding 1): written as single stores, because a `fill` per
/// row became a `memset` call per row of every tap (≈2 % of a ResNet-18 training step at 112 px
/// in calls of 0 or 1 element).
#[inline(always)]
fn zero_outside_columns(block: &mut [f32], w: usize, cols: std::ops::Range<usize>) {
    let (left, right) = (cols.start, w - cols.end);
    match (left, right) {
        (0, 0) => {}
        (1, 1) => block.chunks_exact_mut(w).for_each(|row| {
            row[0] = 0.0;
            row[w - 1] = 0.0;
        }),
        (0, 1) => block.chunks_exact_mut(w).for_each(|row| row[w - 1] = 0.0),
        (1, 0) => block.chunks_exact_mut(w).for_each(|row| row[0] = 0.0),
        _ => block.chunks_exact_mut(w).for_each(|row| {
            row[..left].fill(0.0);
            row[w - right..].fill(0.0);
        }),
    }
}

/// The adjoint of [`copy_shifted`]: the valid entries of `src` added to `plane` in one run (the
/// padding columns of `src`, scratch, are zeroed first so the run can cover them).
#[inline(always)]
fn add_shifted(
    g: &ConvGeometry,
    src: &mut [f32],
    plane: &mut [f32],
    shift: isize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    let w = g.out_w;
    let block = &mut src[rows.start * w..rows.end * w];
    zero_outside_columns(block, w, cols);
    let (lo, hi) = shifted_run(g, rows.start * w, block.len(), shift);
    if lo == hi {
        return; // nothing of this tap lands inside the plane
    }
    let dst = &mut plane[(((rows.start * w + lo) as isize) + shift) as usize..][..hi - lo];
    for (d, &v) in dst.iter_mut().zip(&block[lo..hi]) {
        *d += v;
    }
}

/// The entries `lo..hi` of a run of `len` values starting at flat output index `start` whose
/// input index (output index + `shift`) is inside the input plane.
#[inline(always)]
fn shifted_run(g: &ConvGeometry, start: usize, len: usize, shift: isize) -> (usize, usize) {
    let base = start as isize + shift;
    let lo = (-base).clamp(0, len as isize) as usize;
    let hi = (g.in_plane() as isize - base).clamp(lo as isize, len as isize) as usize;
    (lo, hi)
}

/// The adjoint of [`im2col`]: one image's input gradient, every entry of its `col` gradient added
/// to the input pixel it was read from. Writes all of `image`: each plane starts as the identity
/// tap's row where the convolution has one (the centre of a "same" 3×3), else as zeros, on the
/// thread that computes it — no separate zero-filling pass over the whole gradient.
fn col2im(g: &ConvGeometry, col: &mut [f32], row_stride: usize, image: &mut [MaybeUninit<f32>]) {
    widest(
        #[inline(always)]
        || col2im_body(g, col, row_stride, image),
    )
}

#[inline(always)]
fn col2im_body(g: &ConvGeometry, col: &mut [f32], row_stride: usize, image: &mut [MaybeUninit<f32>]) {
    let [kh, kw] = g.kernel;
    let in_plane = g.in_plane();
    let identity = g.identity_tap();
    for channel in 0..g.in_channels {
        let plane = &mut image[channel * in_plane..][..in_plane];
        let plane = match identity {
            Some((ky, kx)) => {
                let row = (channel * kh + ky) * kw + kx;
                plane.iter_mut().zip(&col[row * row_stride..][..in_plane]).for_each(|(p, &v)| {
                    p.write(v);
                });
                // SAFETY: the identity tap's row has one value per input pixel (same size planes).
                unsafe { assume_written(plane) }
            }
            None => zeroed(plane),
        };
        add_taps(g, col, row_stride, channel, plane, identity);
    }
}

/// [`col2im`] of a band of output rows ([`ConvGeometry::output_rows`]), added to the input
/// gradient `image` (channel `c`'s rows from `image[c · channel_stride]`): neighbouring bands
/// read some of the same input rows.
fn col2im_add(g: &ConvGeometry, col: &mut [f32], row_stride: usize, image: &mut [f32], channel_stride: usize) {
    widest(
        #[inline(always)]
        || {
            for channel in 0..g.in_channels {
                let plane = &mut image[channel * channel_stride..][..g.in_plane()];
                add_taps(g, col, row_stride, channel, plane, None);
            }
        },
    )
}

/// Adds the `col` gradient rows of `channel`'s taps (all but `skip`) to the pixels they read.
#[inline(always)]
fn add_taps(
    g: &ConvGeometry,
    col: &mut [f32],
    row_stride: usize,
    channel: usize,
    plane: &mut [f32],
    skip: Option<(usize, usize)>,
) {
    let ([kh, kw], out_w) = (g.kernel, g.out_w);
    for ky in 0..kh {
        let rows = valid_outputs(g.stride[0], ky * g.dilation[0], g.padding[0], g.out_h, g.in_h);
        for kx in 0..kw {
            if skip == Some((ky, kx)) {
                continue;
            }
            let cols = valid_outputs(g.stride[1], kx * g.dilation[1], g.padding[1], g.out_w, g.in_w);
            if cols.is_empty() {
                continue;
            }
            let first_ix = cols.start * g.stride[1] + kx * g.dilation[1] - g.padding[1];
            let row = (channel * kh + ky) * kw + kx;
            let src = &mut col[row * row_stride..][..g.out_plane()];
            if let Some(shift) = g.flat_shift(ky, kx) {
                add_shifted(g, src, plane, shift, rows.clone(), cols);
                continue;
            }
            for oy in rows.clone() {
                let iy = oy * g.stride[0] + ky * g.dilation[0] - g.padding[0];
                let dst = &mut plane[iy * g.in_w..][..g.in_w];
                let grads = &src[oy * out_w..][cols.clone()];
                if g.stride[1] == 1 {
                    for (d, &v) in dst[first_ix..][..grads.len()].iter_mut().zip(grads) {
                        *d += v;
                    }
                } else {
                    for (j, &v) in grads.iter().enumerate() {
                        dst[first_ix + j * g.stride[1]] += v;
                    }
                }
            }
        }
    }
}

/// The rows of input channels `channels` of `col(x)` of the images `images` side by side:
/// `[channels·taps, images·out_plane]`.
fn chunk_col(g: &ConvGeometry, x: &[f32], images: std::ops::Range<usize>, channels: std::ops::Range<usize>) -> Scratch {
    let (image_len, in_plane, plane) = (g.in_channels * g.in_plane(), g.in_plane(), g.out_plane());
    let block = g.over_channels(&channels);
    let columns = images.len() * plane;
    // im2col writes every entry, padding included.
    let mut col = Scratch::stale(block.patch_len() * columns);
    for (j, b) in images.enumerate() {
        let planes = &x[b * image_len + channels.start * in_plane..][..channels.len() * in_plane];
        im2col(&block, planes, in_plane, &mut col[j * plane..], columns);
    }
    col
}

/// What inference applies to every output of a channel right after the convolution:
/// `y·scale[c] + shift[c]` (batch norm with running statistics, and any bias, folded), plus the
/// residual's value at the same index if there is one (ResNet's and MobileNetV2's skip
/// connections), then the activation.
#[derive(Debug, Clone, Copy)]
pub struct Epilogue<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub activation: EpilogueActivation,
    /// Shaped as the convolution's output.
    pub residual: Option<&'a [f32]>,
}

/// `min(max(y, 0), cap)`, branch-free; NaN stays NaN.
#[inline(always)]
pub(crate) fn clamp_relu(y: f32, cap: f32) -> f32 {
    let y = if y < 0.0 { 0.0 } else { y };
    if y > cap { cap } else { y }
}

/// `y · sigmoid(y)` as flex's SiLU kernel computes it (so fused and unfused agree bit for bit).
#[inline(always)]
pub(crate) fn silu(y: f32) -> f32 {
    y / (1.0 + crate::simd::exp(-y))
}

/// What an inference epilogue applies after the scale and shift.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EpilogueActivation {
    Identity,
    /// `min(max(y, 0), cap)`: ReLU (`cap` infinite) or ReLU6 (`cap` 6).
    Relu {
        cap: f32,
    },
    /// `y · sigmoid(y)` (EfficientNet's swish), with the vectorisable [`crate::simd::exp`].
    Silu,
}

impl Epilogue<'_> {
    /// Applies it to `planes` (consecutive output planes of `plane` values), the first of which is
    /// plane number `first` of the tensor (`channels` planes per image).
    #[inline(always)]
    pub fn apply(&self, planes: &mut [f32], plane: usize, first: usize, channels: usize) {
        for (i, out) in planes.chunks_mut(plane.max(1)).enumerate() {
            let offset = (first + i) * plane;
            self.apply_channel(out, (first + i) % channels, offset);
        }
    }

    /// Applies it to `values`, all of `channel`, the output's values from index `offset` on
    /// (where the residual is read): one loop per activation, so that each is branch-free and
    /// vectorises.
    #[inline(always)]
    pub fn apply_channel(&self, values: &mut [f32], channel: usize, offset: usize) {
        let (scale, shift) = (self.scale[channel], self.shift[channel]);
        if let Some(residual) = self.residual {
            let residual = &residual[offset..][..values.len()];
            let pairs = values.iter_mut().zip(residual);
            return match self.activation {
                EpilogueActivation::Identity => pairs.for_each(|(v, &r)| *v = *v * scale + shift + r),
                EpilogueActivation::Relu { cap } => {
                    pairs.for_each(|(v, &r)| *v = clamp_relu(*v * scale + shift + r, cap))
                }
                EpilogueActivation::Silu => pairs.for_each(|(v, &r)| *v = silu(*v * scale + shift + r)),
            };
        }
        match self.activation {
            EpilogueActivation::Identity => values.iter_mut().for_each(|v| *v = *v * scale + shift),
            EpilogueActivation::Relu { cap } => {
                values.iter_mut().for_each(|v| *v = clamp_relu(*v * scale + shift, cap))
            }
            EpilogueActivation::Silu => values.iter_mut().for_each(|v| *v = silu(*v * scale + shift)),
        }
    }

    /// The activation part (ReLU's clamp branch-free, NaN staying NaN).
    #[inline(always)]
    pub fn activate(&self, y: f32) -> f32 {
        match self.activation {
            EpilogueActivation::Identity => y,
            EpilogueActivation::Relu { cap } => clamp_relu(y, cap),
            EpilogueActivation::Silu => silu(y),
        }
    }

    /// [`Epilogue::apply`] to a whole `[batch, channels, plane]` tensor, in parallel.
    pub fn apply_all(&self, y: &mut [f32], plane: usize, channels: usize) {
        const PLANES_PER_TASK: usize = 8;
        y.par_chunks_mut(plane.max(1) * PLANES_PER_TASK).enumerate().for_each(|(task, planes)| {
            widest(
                #[inline(always)]
                || self.apply(planes, plane, task * PLANES_PER_TASK, channels),
            )
        });
    }
}

/// The convolution's output, `[batch, out_channels, out_h, out_w]`.
pub fn forward(g: &ConvGeometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
    forward_with(g, x, weight, None)
}

/// The convolution's output with `epilogue` applied to each chunk of images as soon as it is
/// computed (while it is in cache), instead of in separate passes over the whole output.
pub fn forward_with(g: &ConvGeometry, x: &[f32], weight: &[f32], epilogue: Option<&Epilogue>) -> Vec<f32> {
    forward_prepared(g, x, weight, epilogue, None)
}

/// [`forward_with`] for weights that stay the same call after call (inference): with their
/// `owner` given, what is prepared from them (bfloat16 panels, Winograd's transformed filters) is
/// kept in [`crate::prepared`]'s cache for the next call instead of made again.
pub(crate) fn forward_prepared(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    epilogue: Option<&Epilogue>,
    owner: Option<&WeightsOwner>,
) -> Vec<f32> {
    // Only bfloat16 products read prepared filters (float32's are gemm's, which packs its own).
    let owner = owner.filter(|_| bf16::enabled());
    assert_eq!(x.len(), g.x_len(), "convolution input size");
    assert_eq!(weight.len(), g.weight_len(), "convolution weight size");
    let len = g.y_len();
    // Written chunk by chunk on the thread that computes it (zeros right before gemm overwrites
    // them, in cache), not zero-filled up front on one thread.
    let mut y = Vec::with_capacity(len);
    if len == 0 {
        return y;
    }
    if crate::winograd::applies(g) {
        crate::winograd::forward(g, x, weight, &mut y.spare_capacity_mut()[..len], epilogue, owner);
        // SAFETY: `winograd::forward` writes every element of the output it is given.
        unsafe { y.set_len(len) };
        return y;
    }
    if crate::tapwise::applies(g) {
        crate::tapwise::forward(g, x, weight, &mut y.spare_capacity_mut()[..len], epilogue);
        // SAFETY: `tapwise::forward` writes every element of the output it is given.
        unsafe { y.set_len(len) };
        return y;
    }
    direct_forward_into(g, x, weight, epilogue, y, owner)
}

/// [`forward_with`] by im2col and products, whatever the shape (what the Winograd path is
/// checked against); `y` empty with room for the output.
fn direct_forward_into(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    epilogue: Option<&Epilogue>,
    mut y: Vec<f32>,
    owner: Option<&WeightsOwner>,
) -> Vec<f32> {
    let len = g.y_len();
    let plan = Plan::new(g);
    let (k, plane, out_image) = (g.patch_len(), g.out_plane(), g.out_channels * g.out_plane());
    let lhs = View { data: weight, row: k, col: 1 };
    // In bfloat16, `col(x)` read from the input as it is packed where that pays
    // (`bf16::PatchLayout::applies`): then there is no copy to keep small, and all input
    // channels are one block (no short last block of `k` per channel block). The filters are
    // packed once for all chunks, shared by the threads (with one chunk per thread each packed
    // all the filters for itself: ResNet-18's last-stage layers at 112 px 3–10 % slower).
    let in_bf16 = bf16::enabled() && plan.images_per_chunk > 1;
    let patches_apply = in_bf16 && bf16::PatchLayout::applies(g);
    // One image in bands of rows, stride 1 and "same" width: in bfloat16 each band reads its
    // `col(x)` from the input as it is packed too, instead of im2col's float32 copy (ResNet-18's
    // batch-1 inference at 224 px spent ~6 % of its time in those copies).
    let single_in_bands = plan.images_per_chunk == 1 && g.in_bands(1);
    let band_patches = bf16::enabled() && single_in_bands && g.flat_shift(0, 0).is_some();
    let all_channels = patches_apply || band_patches;
    let blocks = || {
        let all = std::iter::once(0..g.in_channels);
        if all_channels { Box::new(all) as Box<dyn Iterator<Item = _>> } else { Box::new(g.channel_blocks()) }
    };
    let patch_layout =
        patches_apply.then(|| bf16::PatchLayout::new(g, g.in_channels * g.in_plane(), plan.images_per_chunk));
    let block_filters = |channels: &std::ops::Range<usize>| View { data: &weight[channels.start * g.taps()..], ..lhs };
    // Packed once for the call where several products read them: chunks of images, or the
    // bands of one image (which each packed them for themselves before); once for all calls
    // where the weights have an owner.
    let share = if in_bf16 { plan.chunks > 1 || owner.is_some() } else { bf16::enabled() && single_in_bands };
    let pack_blocks = || {
        let blocks: Vec<bf16::PackedLeft> = blocks()
            .map(|channels| {
                let rows = g.over_channels(&channels).patch_len();
                bf16::PackedLeft::new(g.out_channels, rows, block_filters(&channels))
            })
            .collect();
        let bytes = blocks.iter().map(bf16::PackedLeft::bytes).sum();
        (blocks, bytes)
    };
    let packed_filters: Option<Arc<Vec<bf16::PackedLeft>>> = share.then(|| match owner {
        Some(owner) => {
            let what = Preparation::Blocks { m: g.out_channels, k, all_channels };
            prepared(owner, weight, what, pack_blocks)
        }
        None => Arc::new(pack_blocks().0),
    });
    let compute = |(chunk, y_chunk): (usize, &mut [MaybeUninit<f32>])| {
        let images = plan.images(chunk, g.batch);
        let columns = images.len() * plane;
        if images.len() == 1 {
            let b = images.start;
            let image_len = g.in_channels * g.in_plane();
            let image = &x[b * image_len..][..image_len];
            let pool = if plan.chunks_in_parallel { 1 } else { rayon::current_num_threads() };
            let blocks = packed_filters.as_deref().map(Vec::as_slice);
            let filters = Filters { values: weight, blocks, owner, band_patches };
            image_forward(g, image, &filters, y_chunk, b * g.out_channels, epilogue, pool);
            return;
        }
        let y_chunk: &mut [f32] = {
            let mut product = Scratch::stale(g.out_channels * columns);
            if in_bf16 {
                let image_len = g.in_channels * g.in_plane();
                let images_x = &x[images.start * image_len..];
                let mut own_layout = None;
                let layout = chunk_layout(&patch_layout, &mut own_layout, g, image_len, images.len());
                let patches = layout.map(|layout| bf16::Patches::new(layout, images_x));
                for (i, channels) in blocks().enumerate() {
                    let rows = g.over_channels(&channels).patch_len();
                    let left = match &packed_filters {
                        Some(filters) => bf16::Left::Packed(&filters[i]),
                        None => bf16::Left::View(block_filters(&channels)),
                    };
                    let col;
                    let right = match &patches {
                        Some(patches) => bf16::Right::Patches(patches, channels.start),
                        None => {
                            col = chunk_col(g, x, images.clone(), channels.clone());
                            bf16::Right::View(View { data: &col, row: columns, col: 1 })
                        }
                    };
                    let (m, dst) = (g.out_channels, product.as_mut_ptr());
                    // SAFETY: `product` holds the filters' rows × `columns`, borrowed mutably; the
                    // products are bfloat16 on this thread's pool.
                    unsafe { bf16::multiply_with(m, columns, rows, dst, columns, i > 0, left, right) };
                }
            }
            // `col(x)` a block of input channels at a time, each block's product accumulated.
            for (i, channels) in g.channel_blocks().enumerate().filter(|_| !in_bf16) {
                let col = chunk_col(g, x, images.clone(), channels.clone());
                let first_row = channels.start * g.taps();
                let lhs = View { data: &weight[first_row..], ..lhs };
                let rhs = View { data: &col, row: columns, col: 1 };
                let rows = g.over_channels(&channels).patch_len();
                let accumulate = i > 0;
                multiply(
                    g.out_channels,
                    columns,
                    rows,
                    &mut product,
                    columns,
                    accumulate,
                    lhs,
                    rhs,
                    plan.product_parallelism(),
                );
            }
            // [out, images·plane] → images × [out, plane]
            for (j, image) in y_chunk.chunks_mut(out_image).enumerate() {
                for (channel, out) in image.chunks_mut(plane).enumerate() {
                    let values = &product[channel * columns + j * plane..][..plane];
                    out.iter_mut().zip(values).for_each(|(o, &v)| {
                        o.write(v);
                    });
                }
            }
            // SAFETY: the loops above wrote every element (the chunk is its images' planes).
            unsafe { assume_written(y_chunk) }
        };
        if let Some(epilogue) = epilogue {
            // Chunks start at an image boundary: their first plane is channel 0.
            widest(
                #[inline(always)]
                || epilogue.apply(y_chunk, plane, chunk * plan.images_per_chunk * g.out_channels, g.out_channels),
            );
        }
    };
    let chunks = y.spare_capacity_mut()[..len].chunks_mut(plan.images_per_chunk * out_image).enumerate();
    if plan.chunks_in_parallel {
        chunks.collect::<Vec<_>>().into_par_iter().for_each(compute);
    } else {
        chunks.for_each(compute);
    }
    // SAFETY: the chunks cover `0..len` and `compute` writes every element of each; a panic in
    // it propagates before this line (and `y` is dropped empty).
    unsafe { y.set_len(len) };
    y
}

/// A chunk's patch layout: the layer's where the chunk has as many images (all but a short last
/// chunk), else its own in `own`; none where the layer reads no patches.
fn chunk_layout<'a>(
    layer: &'a Option<bf16::PatchLayout>,
    own: &'a mut Option<bf16::PatchLayout>,
    g: &ConvGeometry,
    image_len: usize,
    images: usize,
) -> Option<&'a bf16::PatchLayout> {
    match layer {
        Some(layout) if layout.images() == images => Some(layout),
        Some(_) => Some(own.insert(bf16::PatchLayout::new(g, image_len, images))),
        None => None,
    }
}

/// One image's output (`y_image`, `[out_channels, out_plane]`, written in full) with `epilogue`
/// applied; `first_plane` is the number of its first plane in the whole output (where the
/// residual is read). With `pool` > 1 the image's work is shared among that many threads: bands of
/// output rows side by side, or, for a plane too small for bands, `col(x)` cut by input channels
/// and the product by output channels; with `pool` = 1 it all runs on the calling thread.
///
/// Why not hand gemm the pool (as before): it forks and joins its threads for every 256-deep block
/// of each product, and im2col and the epilogue ran on one thread in between. ResNet-18 at batch 1
/// on 2 threads (one image: no chunks to share out) had its workers asleep or spinning on the
/// scheduler for a fifth of the run, and im2col alone on the main thread for a tenth.
fn image_forward(
    g: &ConvGeometry,
    image: &[f32],
    filters: &Filters,
    y_image: &mut [MaybeUninit<f32>],
    first_plane: usize,
    epilogue: Option<&Epilogue>,
    pool: usize,
) {
    let (k, plane, out_w) = (g.patch_len(), g.out_plane(), g.out_w);
    if g.in_bands(1) {
        let out = SharedOut::new(y_image);
        let band = |rows: std::ops::Range<usize>| {
            let (band, first_row) = g.output_rows(rows.clone());
            let (start, columns) = (rows.start * out_w, rows.len() * out_w);
            // SAFETY (the products and each `out` access below): this band's columns of each
            // plane, which no other band reads or writes (the bands are disjoint ranges of rows);
            // the first product writes them without reading them.
            let dst = out.block(start, g.out_channels, plane, columns);
            if filters.band_patches {
                // The band's rows of every channel, read as they are packed: all channels one
                // block of `k`.
                let layout = bf16::PatchLayout::band(&band, g.in_plane());
                let patches = bf16::Patches::new(&layout, &image[first_row * g.in_w..]);
                let blocks = filters.blocks.expect("filters packed for bands that read patches");
                let (left, right) = (bf16::Left::Packed(&blocks[0]), bf16::Right::Patches(&patches, 0));
                unsafe { bf16::multiply_with(g.out_channels, columns, k, dst, plane, false, left, right) };
            }
            // Otherwise `col(x)` a block of input channels at a time, each block's product
            // accumulated.
            let mut col = Scratch::stale(if filters.band_patches { 0 } else { g.block_rows() * columns });
            for (i, channels) in g.channel_blocks().enumerate().filter(|_| !filters.band_patches) {
                let block = band.over_channels(&channels);
                let (rows, first_channel) = (block.patch_len(), channels.start * g.in_plane());
                im2col(&block, &image[first_channel + first_row * g.in_w..], g.in_plane(), &mut col, columns);
                let lhs = View { data: &filters.values[channels.start * g.taps()..], row: k, col: 1 };
                let rhs = View { data: &col[..rows * columns], row: columns, col: 1 };
                let accumulate = i > 0;
                match filters.blocks {
                    Some(blocks) => unsafe {
                        let (left, right) = (bf16::Left::Packed(&blocks[i]), bf16::Right::View(rhs));
                        bf16::multiply_with(g.out_channels, columns, rows, dst, plane, accumulate, left, right)
                    },
                    None => unsafe {
                        multiply_raw(g.out_channels, columns, rows, dst, plane, accumulate, lhs, rhs, Parallelism::None)
                    },
                }
            }
            if let Some(epilogue) = epilogue {
                widest(
                    #[inline(always)]
                    || {
                        for c in 0..g.out_channels {
                            let values = unsafe { assume_written(out.part(c * plane + start, columns)) };
                            epilogue.apply_channel(values, c, (first_plane + c) * plane + start);
                        }
                    },
                );
            }
        };
        run_all(g.bands(pool).collect(), pool > 1, band);
        return;
    }
    let col_owned;
    let col: &[f32] = if g.is_pointwise() {
        image
    } else {
        col_owned = image_col(g, image, pool);
        &col_owned
    };
    let rhs = View { data: col, row: plane, col: 1 };
    let ranges = split_ranges(g.out_channels, pool, 8);
    let by_filters = |(channels, part): (std::ops::Range<usize>, &mut [MaybeUninit<f32>])| {
        let (m, first) = (channels.len(), channels.start);
        let lhs = View { data: &filters.values[first * k..], row: k, col: 1 };
        let part = match filters.owner {
            // Each packed value is used for as few multiply-adds as the plane has pixels (49 in
            // ResNet's last stage at 224 px): packing them every call cost batch-1 inference in
            // bfloat16 ~12 %.
            Some(owner) => {
                let packed = prepared(owner, filters.values, Preparation::Rows { first, m, k }, || {
                    let packed = bf16::PackedLeft::new(m, k, lhs);
                    let bytes = packed.bytes();
                    (packed, bytes)
                });
                let (left, right) = (bf16::Left::Packed(&packed), bf16::Right::View(rhs));
                // SAFETY: `part` is `m × plane` values borrowed mutably, written (not read) by a
                // product that does not accumulate; an owner is only given where bfloat16
                // products are enabled.
                unsafe {
                    bf16::multiply_with(m, plane, k, part.as_mut_ptr().cast(), plane, false, left, right);
                    assume_written(part)
                }
            }
            None => multiply_into(m, plane, k, part, lhs, rhs, Parallelism::None),
        };
        if let Some(epilogue) = epilogue {
            widest(
                #[inline(always)]
                || epilogue.apply(part, plane, first_plane + channels.start, g.out_channels),
            );
        }
    };
    run_all(cut_by_ranges(y_image, &ranges, plane), pool > 1, by_filters);
}

/// A convolution's filters as [`image_forward`] reads them.
struct Filters<'a> {
    values: &'a [f32],
    /// Packed in blocks of input channels ([`ConvGeometry::channel_blocks`]) once for all bands
    /// of the image, where its products are bfloat16 and it is cut in bands.
    blocks: Option<&'a [bf16::PackedLeft]>,
    /// Where what is prepared from the filters may be kept between calls (bfloat16 only).
    owner: Option<&'a WeightsOwner>,
    /// Whether the bands read `col(x)` from the input as it is packed (bfloat16, stride 1 and
    /// "same" width; `blocks` then one block of all input channels).
    band_patches: bool,
}

/// One image's `col(x)` (`[patch_len, out_plane]`), its input channels shared among `pool` threads.
fn image_col(g: &ConvGeometry, image: &[f32], pool: usize) -> Scratch {
    let (rows_per_channel, columns) = (g.taps(), g.out_plane());
    // im2col writes every entry, padding included.
    let mut col = Scratch::stale(g.patch_len() * columns);
    let ranges = split_ranges(g.in_channels, pool, 1);
    let channels = |(channels, part): (std::ops::Range<usize>, &mut [f32])| {
        let some = ConvGeometry { in_channels: channels.len(), ..*g };
        im2col(&some, &image[channels.start * g.in_plane()..], g.in_plane(), part, columns);
    };
    run_all(cut_by_ranges(&mut col, &ranges, rows_per_channel * columns), pool > 1, channels);
    col
}

/// `f` on every item: on the rayon pool when `parallel`, else in turn on this thread.
fn run_all<T: Send>(items: Vec<T>, parallel: bool, f: impl Fn(T) + Sync + Send) {
    if parallel { items.into_par_iter().for_each(f) } else { items.into_iter().for_each(f) }
}

/// One image's output shared by the threads computing its bands of rows: each writes only its
/// band's columns of every plane, ranges that interleave in memory and so cannot be handed out as
/// disjoint `&mut` slices up front.
struct SharedOut<'a> {
    ptr: *mut MaybeUninit<f32>,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [MaybeUninit<f32>]>,
}

// SAFETY: a `SharedOut` is the exclusive borrow of its buffer; the threads sharing it touch it only
// through `part` and `block`, whose callers promise disjoint ranges.
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    fn new(out: &'a mut [MaybeUninit<f32>]) -> SharedOut<'a> {
        SharedOut { ptr: out.as_mut_ptr(), len: out.len(), _borrow: std::marker::PhantomData }
    }

    /// Values `start..start + len`.
    ///
    /// # Safety
    /// No other thread reads or writes them while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, start: usize, len: usize) -> &mut [MaybeUninit<f32>] {
        assert!(start + len <= self.len, "part out of bounds");
        // SAFETY: within the buffer (asserted); exclusive by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }

    /// The start of `rows` rows of `n` values, `stride` apart, from `start` on: a product's
    /// destination for [`multiply_raw`], whose caller promises the same exclusivity as `part`'s.
    fn block(&self, start: usize, rows: usize, stride: usize, n: usize) -> *mut f32 {
        assert!(rows == 0 || start + (rows - 1) * stride + n <= self.len, "block out of bounds");
        // `wrapping_add`: only an address; `start ≤ len` by the assertion unless `rows` is 0.
        self.ptr.wrapping_add(start).cast::<f32>()
    }
}

/// A chunk of the backward: its index, and its images' part of the input gradient (if wanted).
type Part<'a> = (usize, Option<&'a mut [MaybeUninit<f32>]>);

/// The weight gradient alone, by Winograd's method where it applies.
fn weight_gradient(g: &ConvGeometry, x: &[f32], weight: &[f32], out_grad: &[f32]) -> Vec<f32> {
    if crate::winograd::weight_gradient_applies(g) {
        crate::winograd::weight_gradient(g, x, out_grad)
    } else {
        backward(g, x, weight, out_grad, false, true).1.expect("asked for the weight gradient")
    }
}

/// The gradients with respect to the input (`[batch, in_channels, in_h, in_w]`) and the weight
/// (`[out_channels, in_channels, kh, kw]`), each only where asked for.
pub fn backward(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    out_grad: &[f32],
    want_input: bool,
    want_weight: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    assert_eq!(x.len(), g.x_len(), "convolution input size");
    assert_eq!(weight.len(), g.weight_len(), "convolution weight size");
    assert_eq!(out_grad.len(), g.y_len(), "convolution output-gradient size");
    if crate::tapwise::backward_applies(g) {
        return (
            want_input.then(|| crate::tapwise::input_gradient(g, weight, out_grad)),
            want_weight.then(|| crate::tapwise::weight_gradient(g, x, out_grad)),
        );
    }
    if want_input && let Some((transposed, flipped)) = crate::winograd::input_gradient_as_forward(g, weight) {
        // The input gradient of a 3×3 stride-1 convolution is itself one (of the output gradient,
        // with the filters flipped and input and output channels swapped), by Winograd's method;
        // the weight gradient stays with the products below.
        let input_grad = forward(&transposed, out_grad, &flipped);
        let weight_grad = want_weight.then(|| weight_gradient(g, x, weight, out_grad));
        return (Some(input_grad), weight_grad);
    }
    if want_weight && !want_input && crate::winograd::weight_gradient_applies(g) {
        return (None, Some(crate::winograd::weight_gradient(g, x, out_grad)));
    }
    let threads = rayon::current_num_threads().max(1);
    // Fewer images than threads (training at batch 1, an epoch's last short batch): the images
    // give the threads nothing to share out, and cut by channels each thread still has its own
    // filters and input channels (ResNet-18 at batch 1 trained 9 % faster at 224 px, 30 % at 112,
    // than with each image's bands in turn and gemm forking the pool for every product).
    let fewer_images_than_threads = threads > 1 && g.batch < threads;
    if fewer_images_than_threads || filters_outnumber_pixels(g, threads) {
        backward_by_channels(g, x, weight, out_grad, want_input, want_weight, threads)
    } else {
        backward_by_images(g, x, weight, out_grad, want_input, want_weight)
    }
}

/// The backward in chunks of images (see [`Plan`]), each chunk's products on one thread.
fn backward_by_images(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    out_grad: &[f32],
    want_input: bool,
    want_weight: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let plan = Plan::new(g);
    let (k, plane) = (g.patch_len(), g.out_plane());
    let (in_image, out_image) = (g.in_channels * g.in_plane(), g.out_channels * plane);
    // Written chunk by chunk on the thread that computes it, as the forward's output is.
    let mut input_grad: Option<Vec<f32>> = want_input.then(|| Vec::with_capacity(g.x_len()));
    let weight_t = View { data: weight, row: 1, col: k };
    // In bfloat16 the weight gradient's `col(x)ᵀ` is read from the input as it is packed
    // (`bf16::Patches`), where the layout is built once for every chunk of as many images.
    let patch_layout = (want_weight && bf16::enabled() && bf16::PatchLayout::applies(g))
        .then(|| bf16::PatchLayout::new(g, in_image, plan.images_per_chunk));
    // In bfloat16, `Wᵀ` packed once for every chunk and band that multiplies it (as the forward's
    // filters are): each packed it for itself before, the same filters once per thread or more.
    let whole_image_is_col = g.is_pointwise() && plan.images_per_chunk == 1;
    let share_wt =
        want_input && bf16::enabled() && (plan.chunks > 1 || g.in_bands(plan.images_per_chunk)) && g.out_channels > 0;
    let packed_wt: Option<Vec<bf16::PackedLeft>> = share_wt.then(|| {
        if whole_image_is_col {
            vec![bf16::PackedLeft::new(k, g.out_channels, weight_t)]
        } else {
            g.channel_blocks()
                .map(|channels| {
                    let rows = g.over_channels(&channels).patch_len();
                    let block = View { data: &weight[channels.start * g.taps()..], ..weight_t };
                    bf16::PackedLeft::new(rows, g.out_channels, block)
                })
                .collect()
        }
    });
    // `dst` (`rows × columns`) = block `block`'s rows of `Wᵀ` (from `first_row` on) · `dy`.
    let input_product = |block: usize, first_row: usize, rows: usize, columns: usize, dst: &mut [f32], dy: View| {
        match &packed_wt {
            Some(blocks) => {
                assert!(dst.len() >= rows * columns, "product destination too small");
                let (left, right) = (bf16::Left::Packed(&blocks[block]), bf16::Right::View(dy));
                // SAFETY: `dst` holds `rows × columns` values, borrowed mutably; packed filters
                // exist only where products are bfloat16.
                unsafe {
                    bf16::multiply_with(rows, columns, g.out_channels, dst.as_mut_ptr(), columns, false, left, right)
                }
            }
            None => {
                let weight_t = View { data: &weight[first_row..], ..weight_t };
                let parallelism = plan.product_parallelism();
                multiply(rows, columns, g.out_channels, dst, columns, false, weight_t, dy, parallelism)
            }
        }
    };

    // One chunk: its share of the weight gradient written (`first`) or added to `weight_acc`, its
    // input gradient written to `input_part` (the chunk's images).
    let compute = |weight_acc: &mut [f32], first_of_group: bool, (chunk, input_part): Part| {
        let images = plan.images(chunk, g.batch);
        let columns = images.len() * plane;
        let first = images.start;
        if g.in_bands(images.len()) {
            // One large image in bands of output rows, as the forward does: each band's `col(x)`
            // and `col` gradient stay near the core instead of 7 MB written and read back.
            let dy_image = &out_grad[first * out_image..][..out_image];
            let mut input_image = input_part.map(zeroed);
            for (i, rows) in g.bands(1).enumerate() {
                let (band, first_row) = g.output_rows(rows.clone());
                let columns = rows.len() * g.out_w;
                let dy_band = View { data: &dy_image[rows.start * g.out_w..], row: plane, col: 1 };
                // A block of input channels at a time, as below.
                let mut col = Scratch::stale(g.block_rows() * columns);
                for (b, channels) in g.channel_blocks().enumerate() {
                    let block = band.over_channels(&channels);
                    let (rows, first_row_of_col) = (block.patch_len(), channels.start * g.taps());
                    let first_value = channels.start * g.in_plane() + first_row * g.in_w;
                    if want_weight {
                        im2col(&block, &x[first * in_image + first_value..], g.in_plane(), &mut col, columns);
                        let col_t = View { data: &col[..rows * columns], row: 1, col: columns };
                        let accumulate = !first_of_group || i > 0;
                        multiply(
                            g.out_channels,
                            rows,
                            columns,
                            &mut weight_acc[first_row_of_col..],
                            k,
                            accumulate,
                            dy_band,
                            col_t,
                            plan.product_parallelism(),
                        );
                    }
                    if let Some(image) = input_image.as_deref_mut() {
                        let col_grad = &mut col[..rows * columns];
                        input_product(b, first_row_of_col, rows, columns, col_grad, dy_band);
                        col2im_add(&block, col_grad, columns, &mut image[first_value..], g.in_plane());
                    }
                }
            }
            return;
        }
        // dy of the chunk as one [out, images·plane] matrix.
        let gathered;
        let dy: &[f32] = if images.len() == 1 {
            &out_grad[first * out_image..][..out_image]
        } else {
            let mut m = Scratch::stale(g.out_channels * columns);
            for (j, b) in images.clone().enumerate() {
                for channel in 0..g.out_channels {
                    m[channel * columns + j * plane..][..plane]
                        .copy_from_slice(&out_grad[b * out_image + channel * plane..][..plane]);
                }
            }
            gathered = m;
            &gathered
        };
        let dy_view = View { data: dy, row: columns, col: 1 };
        if g.is_pointwise() && images.len() == 1 {
            // The image's input is its `col(x)`: no im2col, and the input gradient is the product.
            let col = &x[first * in_image..][..in_image];
            if want_weight {
                let col_t = View { data: col, row: 1, col: columns };
                let accumulate = !first_of_group;
                multiply(
                    g.out_channels,
                    k,
                    columns,
                    weight_acc,
                    k,
                    accumulate,
                    dy_view,
                    col_t,
                    plan.product_parallelism(),
                );
            }
            if let Some(input_part) = input_part {
                match packed_wt.as_deref().filter(|_| whole_image_is_col) {
                    Some([packed]) => {
                        assert_eq!(input_part.len(), k * columns, "input gradient size");
                        let (left, right) = (bf16::Left::Packed(packed), bf16::Right::View(dy_view));
                        // SAFETY: `input_part` is `k × columns` values borrowed mutably, written
                        // (not read) by a product that does not accumulate; packed filters exist
                        // only where products are bfloat16.
                        unsafe {
                            let dst = input_part.as_mut_ptr().cast();
                            bf16::multiply_with(k, columns, g.out_channels, dst, columns, false, left, right)
                        }
                    }
                    _ => {
                        let parallelism = plan.product_parallelism();
                        multiply_into(k, columns, g.out_channels, input_part, weight_t, dy_view, parallelism);
                    }
                }
            }
            return;
        }
        // A block of input channels at a time (as the forward does): its rows of `col(x)` for
        // its columns of the weight gradient, its rows of the `col` gradient for its planes of
        // the input gradient.
        let mut input_part = input_part;
        // The weight gradient from patches: all input channels in one product.
        let mut own_layout = None;
        let layout = chunk_layout(&patch_layout, &mut own_layout, g, in_image, images.len());
        let patches = layout.map(|layout| bf16::Patches::new(layout, &x[first * in_image..]));
        if let Some(patches) = &patches {
            assert!(weight_acc.len() >= g.out_channels * k, "weight gradient too small");
            let (left, right) = (bf16::Left::View(dy_view), bf16::Right::Transposed(patches, 0));
            // SAFETY: `weight_acc` holds the filters' `out_channels × k` values, borrowed mutably;
            // products are bfloat16 on this thread.
            unsafe {
                bf16::multiply_with(
                    g.out_channels,
                    k,
                    columns,
                    weight_acc.as_mut_ptr(),
                    k,
                    !first_of_group,
                    left,
                    right,
                )
            };
        }
        for (b, channels) in g.channel_blocks().enumerate() {
            let block = g.over_channels(&channels);
            let (rows, first_row) = (block.patch_len(), channels.start * g.taps());
            if want_weight && patches.is_none() {
                let col = chunk_col(g, x, images.clone(), channels.clone());
                let col_t = View { data: &col, row: 1, col: columns };
                let accumulate = !first_of_group;
                let weight_block = &mut weight_acc[first_row..];
                multiply(
                    g.out_channels,
                    rows,
                    columns,
                    weight_block,
                    k,
                    accumulate,
                    dy_view,
                    col_t,
                    plan.product_parallelism(),
                );
            }
            if let Some(input_part) = input_part.as_deref_mut() {
                let mut col_grad = Scratch::stale(rows * columns);
                input_product(b, first_row, rows, columns, &mut col_grad, dy_view);
                let in_plane = g.in_plane();
                for (j, image) in input_part.chunks_mut(in_image).enumerate() {
                    let planes = &mut image[channels.start * in_plane..][..channels.len() * in_plane];
                    col2im(&block, &mut col_grad[j * plane..], columns, planes);
                }
            }
        }
    };

    let parts: Vec<Part> = match input_grad.as_mut() {
        Some(grad) => grad.spare_capacity_mut()[..g.x_len()]
            .chunks_mut(plan.images_per_chunk * in_image)
            .map(Some)
            .enumerate()
            .collect(),
        None => (0..plan.chunks).map(|chunk| (chunk, None)).collect(),
    };
    let weight_len = if want_weight { g.weight_len() } else { 0 };
    // The chunks in as many contiguous groups as threads, each group's weight gradient in one
    // buffer that its first chunk writes (no zeroing), then the groups' buffers summed in one
    // parallel pass. (rayon's fold/reduce made a zeroed buffer per split and summed them on one
    // thread: for ResNet's last layers, 9 MB each, more traffic than the products.)
    let groups = if plan.chunks_in_parallel { rayon::current_num_threads().clamp(1, parts.len().max(1)) } else { 1 };
    let per_group = parts.len().div_ceil(groups).max(1);
    let mut grouped: Vec<Vec<Part>> = Vec::with_capacity(groups);
    let mut parts = parts.into_iter().peekable();
    while parts.peek().is_some() {
        grouped.push(parts.by_ref().take(per_group).collect());
    }
    let run_group = |group: Vec<Part>| {
        let mut acc = Scratch::stale(weight_len);
        for (i, part) in group.into_iter().enumerate() {
            compute(&mut acc, i == 0, part);
        }
        acc
    };
    let accs: Vec<Scratch> = if grouped.len() > 1 {
        grouped.into_par_iter().map(run_group).collect()
    } else {
        grouped.into_iter().map(run_group).collect()
    };
    let weight_grad = if !want_weight {
        Vec::new()
    } else if accs.is_empty() {
        written_zeros(weight_len)
    } else {
        const SUM_CHUNK: usize = 1 << 12;
        crate::simd::par_filled(weight_len, SUM_CHUNK, |offset, out| {
            widest(
                #[inline(always)]
                || {
                    let mut sum = Scratch::stale(out.len());
                    sum.copy_from_slice(&accs[0][offset..][..out.len()]);
                    for acc in &accs[1..] {
                        sum.iter_mut().zip(&acc[offset..]).for_each(|(s, &v)| *s += v);
                    }
                    out.iter_mut().zip(sum.iter()).for_each(|(o, &v)| {
                        o.write(v);
                    });
                },
            )
        })
    };
    if let Some(grad) = input_grad.as_mut() {
        // SAFETY: the parts cover `0..x_len` and `compute` wrote every element of each (col2im
        // writes whole images; the pointwise product its whole part); a panic in it propagated
        // before this line.
        unsafe { grad.set_len(g.x_len()) };
    }
    (input_grad, want_weight.then_some(weight_grad))
}

/// Whether a layer has more filters per thread than output pixels in the whole batch (ResNet's
/// last stage at 112 px: 512 filters of 4608 weights, 16 images of 4×4 pixels). Cut by images,
/// such a layer's backward gives each thread a whole weight gradient to accumulate (9 MB there)
/// and a sum of them afterwards, and has every thread pack every filter for the input gradient:
/// more memory traffic than arithmetic. [`backward_by_channels`] cuts it by channels instead.
/// Only for weights well beyond a core's L2 cache (4 MB): smaller per-thread gradients stay in
/// cache, and cutting by images measured faster (ResNet-18's 1×1 shortcut to its last stage).
fn filters_outnumber_pixels(g: &ConvGeometry, threads: usize) -> bool {
    const LARGE_WEIGHT: usize = 1 << 20;
    threads > 1 && g.weight_len() >= LARGE_WEIGHT && g.out_channels * threads >= g.batch * g.out_plane()
}

/// `0..n` in at most `parts` consecutive ranges of a multiple of `align` (but the last).
pub(crate) fn split_ranges(n: usize, parts: usize, align: usize) -> Vec<std::ops::Range<usize>> {
    let step = n.div_ceil(parts.max(1)).next_multiple_of(align.max(1)).max(1);
    (0..n).step_by(step).map(|start| start..(start + step).min(n)).collect()
}

/// `buf` cut into consecutive parts of `range.len() · unit` values, one per range, each with its
/// range.
pub(crate) fn cut_by_ranges<'a, T>(
    mut buf: &'a mut [T],
    ranges: &[std::ops::Range<usize>],
    unit: usize,
) -> Vec<(std::ops::Range<usize>, &'a mut [T])> {
    ranges
        .iter()
        .map(|r| {
            let (part, rest) = std::mem::take(&mut buf).split_at_mut(r.len() * unit);
            buf = rest;
            (r.clone(), part)
        })
        .collect()
}

/// A range of input channels and, for each image, the part of the input gradient they cover.
type ChannelParts<'a> = (std::ops::Range<usize>, Vec<&'a mut [MaybeUninit<f32>]>);

/// The backward over the whole batch at once, cut by channels: thread `t` computes the weight
/// gradient of its filters (output channels) and the input gradient of its input channels, each
/// written once where it lands. The batch's `col(x)` (`[patch_len, batch·out_plane]`) and `dy`
/// (`[out_channels, batch·out_plane]`) are built first, also cut by channels.
fn backward_by_channels(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    out_grad: &[f32],
    want_input: bool,
    want_weight: bool,
    threads: usize,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (k, taps, plane, in_plane) = (g.patch_len(), g.taps(), g.out_plane(), g.in_plane());
    let (in_image, out_image, total) = (g.in_channels * in_plane, g.out_channels * plane, g.batch * plane);
    // Filters in multiples of the microkernel's 16 rows; input channels one by one.
    let (out_ranges, in_ranges) = (split_ranges(g.out_channels, threads, 16), split_ranges(g.in_channels, threads, 1));
    let channels = |r: &std::ops::Range<usize>| ConvGeometry { in_channels: r.len(), ..*g };

    let mut dy = Scratch::stale(g.out_channels * total);
    // In bfloat16 the weight gradient's `col(x)ᵀ` is read from the input as it is packed
    // (`bf16::Patches`) where that pays, instead of im2col's copy of the whole batch first.
    let patch_layout = (want_weight && bf16::enabled() && bf16::PatchLayout::applies(g))
        .then(|| bf16::PatchLayout::new(g, in_image, g.batch));
    let build_col = want_weight && patch_layout.is_none();
    let mut col = Scratch::stale(if build_col { k * total } else { 0 });
    {
        cut_by_ranges(&mut dy, &out_ranges, total).into_par_iter().for_each(|(r, part)| {
            for (o, row) in r.zip(part.chunks_exact_mut(total.max(1))) {
                for (b, out) in row.chunks_exact_mut(plane.max(1)).enumerate() {
                    out.copy_from_slice(&out_grad[b * out_image + o * plane..][..plane]);
                }
            }
        });
        if build_col {
            cut_by_ranges(&mut col, &in_ranges, taps * total).into_par_iter().for_each(|(r, part)| {
                let sub = channels(&r);
                for b in 0..g.batch {
                    let image = &x[b * in_image + r.start * in_plane..][..r.len() * in_plane];
                    im2col(&sub, image, in_plane, &mut part[b * plane..], total);
                }
            });
        }
    }

    let weight_grad = want_weight.then(|| {
        let mut grad: Vec<f32> = Vec::with_capacity(g.weight_len());
        let parts = cut_by_ranges(&mut grad.spare_capacity_mut()[..g.weight_len()], &out_ranges, k);
        let patches = patch_layout.as_ref().map(|layout| bf16::Patches::new(layout, x));
        parts.into_par_iter().for_each(|(r, part)| {
            let dy_rows = View { data: &dy[r.start * total..], row: total, col: 1 };
            match &patches {
                Some(patches) => {
                    assert_eq!(part.len(), r.len() * k, "weight gradient part");
                    let (left, right) = (bf16::Left::View(dy_rows), bf16::Right::Transposed(patches, 0));
                    // SAFETY: `part` holds `r.len() × k` values, borrowed mutably; a product that
                    // does not accumulate writes them before reading them. Products are bfloat16
                    // on this thread.
                    unsafe { bf16::multiply_with(r.len(), k, total, part.as_mut_ptr().cast(), k, false, left, right) };
                }
                None => {
                    let col_t = View { data: &col, row: 1, col: total };
                    multiply_into(r.len(), k, total, part, dy_rows, col_t, Parallelism::None);
                }
            }
        });
        // SAFETY: the parts cover `0..weight_len` and each was written in full (by the product); a
        // panic in the loop propagated before this line.
        unsafe { grad.set_len(g.weight_len()) };
        grad
    });

    let input_grad = want_input.then(|| {
        let mut grad: Vec<f32> = Vec::with_capacity(g.x_len());
        // Thread t's part of every image: its input channels' planes.
        let mut parts: Vec<ChannelParts> = in_ranges.iter().map(|r| (r.clone(), Vec::with_capacity(g.batch))).collect();
        for image in grad.spare_capacity_mut()[..g.x_len()].chunks_exact_mut(in_image.max(1)) {
            for ((_, images), (_, part)) in parts.iter_mut().zip(cut_by_ranges(image, &in_ranges, in_plane)) {
                images.push(part);
            }
        }
        let dy_all = View { data: &dy, row: total, col: 1 };
        parts.into_par_iter().for_each(|(r, images)| {
            let sub = channels(&r);
            let rows = r.len() * taps;
            let mut col_grad = Scratch::stale(rows * total);
            let weight_t = View { data: &weight[r.start * taps..], row: 1, col: k };
            multiply(rows, total, g.out_channels, &mut col_grad, total, false, weight_t, dy_all, Parallelism::None);
            for (b, image) in images.into_iter().enumerate() {
                col2im(&sub, &mut col_grad[b * plane..], total, image);
            }
        });
        // SAFETY: the parts cover every image's channels and col2im wrote each plane in full; a
        // panic in the loop propagated before this line.
        unsafe { grad.set_len(g.x_len()) };
        grad
    });
    (input_grad, weight_grad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_buffers_are_reused_by_size_not_by_order() {
        let (small, large) = (Scratch::stale(100), Scratch::stale(100_000));
        let (small_at, large_at) = (small.as_ptr(), large.as_ptr());
        // Returned small first: the last one returned is the large buffer.
        drop(small);
        drop(large);
        let again = Scratch::stale(80);
        assert_eq!((again.len(), again.as_ptr()), (80, small_at), "the small buffer serves the small request");
        let big = Scratch::stale(90_000);
        assert_eq!((big.len(), big.as_ptr()), (90_000, large_at), "and the large one the large request");
        drop(again);
        // Nothing holds 200 000 values: a new buffer (the small one stays pooled).
        let larger = Scratch::stale(200_000);
        assert_eq!(larger.len(), 200_000);
        assert!(larger.iter().all(|v| v.is_finite()), "grown values are initialised");
        drop(larger);
        drop(big);
        assert_eq!(Scratch::stale(50).as_ptr(), small_at);
    }

    /// The convolution by its definition, in f64.
    fn reference_forward(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f64> {
        let mut y = vec![0.0f64; g.y_len()];
        for b in 0..g.batch {
            for o in 0..g.out_channels {
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        let mut sum = 0.0f64;
                        for c in 0..g.in_channels {
                            for ky in 0..g.kernel[0] {
                                for kx in 0..g.kernel[1] {
                                    let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.padding[0] as isize;
                                    let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.in_h as isize || ix >= g.in_w as isize {
                                        continue;
                                    }
                                    let xv = x[((b * g.in_channels + c) * g.in_h + iy as usize) * g.in_w + ix as usize];
                                    let wv = w[((o * g.in_channels + c) * g.kernel[0] + ky) * g.kernel[1] + kx];
                                    sum += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((b * g.out_channels + o) * g.out_h + oy) * g.out_w + ox] = sum;
                    }
                }
            }
        }
        y
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // A deterministic spread of values in [-1, 1): enough to make every index matter.
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 23) as f32 - 1.0)
            .collect()
    }

    fn geometry(
        batch: usize,
        channels: [usize; 2],
        size: [usize; 2],
        kernel: usize,
        stride: usize,
        padding: [usize; 2],
        dilation: usize,
    ) -> ConvGeometry {
        let out = |len: usize, pad_total: usize| (len + pad_total - dilation * (kernel - 1) - 1) / stride + 1;
        ConvGeometry {
            batch,
            in_channels: channels[0],
            out_channels: channels[1],
            in_h: size[0],
            in_w: size[1],
            // padding[1] is extra padding at the end ("same" puts the odd pixel there).
            out_h: out(size[0], 2 * padding[0] + padding[1]),
            out_w: out(size[1], 2 * padding[0] + padding[1]),
            kernel: [kernel, kernel],
            stride: [stride, stride],
            padding: [padding[0], padding[0]],
            dilation: [dilation, dilation],
        }
    }

    fn cases() -> Vec<ConvGeometry> {
        vec![
            geometry(3, [4, 5], [9, 7], 3, 1, [1, 0], 1),
            geometry(4, [3, 6], [11, 10], 3, 2, [1, 0], 1),
            geometry(2, [5, 4], [8, 8], 1, 1, [0, 0], 1),
            geometry(5, [6, 7], [8, 9], 1, 2, [0, 0], 1),
            geometry(2, [3, 4], [12, 12], 7, 2, [3, 0], 1),
            geometry(3, [4, 3], [10, 9], 3, 1, [2, 0], 2),
            geometry(2, [3, 5], [8, 8], 3, 2, [0, 1], 1),
            geometry(2, [3, 4], [6, 11], 5, 1, [2, 0], 1), // "same" 5×5: two padding columns each side
            geometry(2, [3, 4], [7, 8], 3, 1, [0, 0], 1),  // stride 1 without padding: rows shrink
            geometry(2, [3, 4], [6, 7], 4, 1, [1, 1], 1),  // "same" 4×4: the identity tap off-centre
            // Batches of tiny planes: several images share one product.
            geometry(9, [8, 16], [2, 2], 3, 1, [1, 0], 1),
            geometry(1, [8, 4], [3, 3], 3, 1, [1, 0], 1),
            // 1×1 and 2×1 planes under a padded 3×3 filter: whole taps fall outside the plane.
            geometry(2, [3, 4], [1, 1], 3, 1, [1, 0], 1),
            geometry(2, [3, 4], [2, 1], 3, 1, [1, 0], 1),
            // More input channels than one block of `col(x)` rows (BLOCK_ROWS), the last block
            // partial: 150 channels of a 3×3 filter, and 1200 of a strided 1×1 one.
            geometry(6, [150, 5], [3, 3], 3, 1, [1, 0], 1),
            geometry(4, [1200, 3], [4, 4], 1, 2, [0, 0], 1),
        ]
    }

    #[test]
    fn forward_is_the_definition() {
        for g in cases() {
            let (x, w) = (values(g.x_len(), 1), values(g.weight_len(), 2));
            let ours = forward(&g, &x, &w);
            let reference = reference_forward(&g, &x, &w);
            // Rounding grows with the number of terms summed (each below 1 in magnitude): the same
            // 1e-4 as ever up to 250 of them, more for the many-channel shapes.
            let tolerance = f64::max(1e-4, 4e-7 * g.patch_len() as f64);
            for (i, (&a, &b)) in ours.iter().zip(&reference).enumerate() {
                assert!((a as f64 - b).abs() < tolerance, "{g:?}: output {i} is {a}, not {b}");
            }
        }
    }

    /// 3×3 stride-1 shapes for the Winograd path: odd output sides (partial tiles), no padding,
    /// two rows of it, "same" with the odd row after, a plane of one tile, and blocks of tile
    /// rows that run across images.
    fn winograd_cases() -> Vec<ConvGeometry> {
        vec![
            geometry(3, [16, 17], [9, 7], 3, 1, [1, 0], 1),
            geometry(2, [17, 16], [8, 8], 3, 1, [0, 0], 1),
            geometry(2, [16, 16], [6, 11], 3, 1, [2, 0], 1),
            geometry(2, [16, 18], [8, 9], 3, 1, [0, 1], 1),
            geometry(2, [16, 16], [2, 2], 3, 1, [1, 0], 1),
            geometry(3, [20, 18], [30, 26], 3, 1, [1, 0], 1),
        ]
    }

    /// A shape the gates hand to Winograd (64 channels, 16 tiles covering a 7×8 plane), so that
    /// `backward` takes its input-gradient path.
    fn winograd_gated_case() -> ConvGeometry {
        geometry(2, [64, 64], [8, 9], 3, 1, [0, 1], 1)
    }

    fn winograd_forward(g: &ConvGeometry, x: &[f32], w: &[f32], epilogue: Option<&Epilogue>) -> Vec<f32> {
        let mut y = Vec::with_capacity(g.y_len());
        crate::winograd::forward(g, x, w, &mut y.spare_capacity_mut()[..g.y_len()], epilogue, None);
        // SAFETY: `winograd::forward` writes every element.
        unsafe { y.set_len(g.y_len()) };
        y
    }

    #[test]
    fn winograd_is_the_definition() {
        for g in winograd_cases() {
            let (x, w) = (values(g.x_len(), 1), values(g.weight_len(), 2));
            let ours = winograd_forward(&g, &x, &w, None);
            let reference = reference_forward(&g, &x, &w);
            for (i, (&a, &b)) in ours.iter().zip(&reference).enumerate() {
                assert!((a as f64 - b).abs() < 1e-4, "{g:?}: output {i} is {a}, not {b}");
            }
            // The weight gradient by the transposed method, whatever the gate on tiles says.
            let dy = values(g.y_len(), 5);
            let ours = crate::winograd::weight_gradient(&g, &x, &dy);
            let (_, reference) = reference_backward(&g, &x, &w, &dy);
            for (i, (&a, &b)) in ours.iter().zip(&reference).enumerate() {
                assert!((a as f64 - b).abs() < 1e-2, "{g:?}: weight gradient {i} is {a}, not {b}");
            }
        }
    }

    #[test]
    fn winograd_computes_the_forward_and_input_gradient_of_3x3_stride_1_shapes() {
        let threads = rayon::current_num_threads();
        // The shapes of the cases whose planes are at least 16 tiles and covered closely by them,
        // with 64 channels.
        let gated = [winograd_cases()[2], winograd_cases()[3], winograd_cases()[5], winograd_gated_case()];
        for g in gated.map(|g| ConvGeometry { in_channels: 64, out_channels: 64, ..g }) {
            let batch = g.batch.max(threads);
            let g = ConvGeometry { batch, ..g };
            assert!(crate::winograd::applies(&g), "{g:?}");
            let tiles = batch * g.out_h.div_ceil(2) * g.out_w.div_ceil(2);
            assert_eq!(crate::winograd::weight_gradient_applies(&g), tiles >= 256, "{g:?}");
            assert!(crate::winograd::input_gradient_as_forward(&g, &values(g.weight_len(), 1)).is_some(), "{g:?}");
        }
        // Not: strided, dilated, 1×1, few channels, fewer images than threads, under 64 channels,
        // a 7×7 plane (4×4 tiles cover 64 outputs), a 4×4 plane (4 tiles).
        let narrow = ConvGeometry { batch: threads.max(2), ..winograd_cases()[5] };
        let seven = geometry(threads.max(2), [64, 64], [7, 7], 3, 1, [1, 0], 1);
        let four = geometry(threads.max(2), [64, 64], [4, 4], 3, 1, [1, 0], 1);
        for g in [
            cases()[1],
            cases()[2],
            cases()[5],
            cases()[0],
            geometry(1, [64, 64], [8, 8], 3, 1, [1, 0], 1),
            narrow,
            seven,
            four,
        ] {
            if g.batch == 1 && threads == 1 {
                continue;
            }
            assert!(!crate::winograd::applies(&g), "{g:?}");
        }
    }

    /// Winograd's transforms add and subtract before the products: measured against the sum in
    /// f64 its error is the direct path's (ReLU-like inputs, positive with a large mean, where
    /// the differences of neighbours cancel most). A transform with a wrong constant, or F(4×4,
    /// 3×3)'s larger ones, would show here first.
    #[test]
    fn winograd_rounds_as_the_direct_path_does() {
        for (channels, side, mean) in [(16, 8, 0.0f32), (16, 8, 3.0), (64, 28, 3.0), (256, 14, 1.0)] {
            let g = geometry(2, [channels, channels], [side, side], 3, 1, [1, 0], 1);
            let x: Vec<f32> = values(g.x_len(), 7).iter().map(|v| (2.0 * v + mean).max(0.0)).collect();
            let w: Vec<f32> = values(g.weight_len(), 9).iter().map(|v| 0.1 * v).collect();
            let exact = reference_forward(&g, &x, &w);
            let error = |y: &[f32]| y.iter().zip(&exact).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
            let direct = error(&direct_forward_into(&g, &x, &w, None, Vec::with_capacity(g.y_len()), None));
            let winograd = error(&winograd_forward(&g, &x, &w, None));
            assert!(winograd <= 2.0 * direct, "{g:?}: Winograd's error {winograd:e}, the direct path's {direct:e}");
        }
    }

    /// `ours` on shape `g` with a scale, shift, capped ReLU and residual epilogue, against the
    /// direct path with the same epilogue.
    fn applies_the_epilogue_as_the_direct_path_does(
        g: ConvGeometry,
        ours: impl Fn(&ConvGeometry, &[f32], &[f32], Option<&Epilogue>) -> Vec<f32>,
    ) {
        let (x, w, residual) = (values(g.x_len(), 1), values(g.weight_len(), 2), values(g.y_len(), 3));
        let (scale, shift) = (values(g.out_channels, 4), values(g.out_channels, 5));
        let epilogue = Epilogue {
            scale: &scale,
            shift: &shift,
            activation: EpilogueActivation::Relu { cap: 6.0 },
            residual: Some(&residual),
        };
        let ours = ours(&g, &x, &w, Some(&epilogue));
        let direct = direct_forward_into(&g, &x, &w, Some(&epilogue), Vec::with_capacity(g.y_len()), None);
        assert!(ours.contains(&0.0) && ours.iter().any(|&v| v > 0.0), "{g:?}: the ReLU cuts some, not all");
        for (i, (&a, &b)) in ours.iter().zip(&direct).enumerate() {
            assert!((a - b).abs() < 1e-4, "{g:?}: output {i} is {a}, not {b}");
        }
    }

    #[test]
    fn winograd_applies_the_epilogue_as_the_direct_path_does() {
        applies_the_epilogue_as_the_direct_path_does(geometry(4, [16, 24], [10, 9], 3, 1, [1, 0], 1), winograd_forward);
    }

    /// Shapes for the tap-by-tap path (3×3 "same" on small planes, at least 64 outputs per
    /// channel): 4×4 and 5×5 planes, a 2×3 plane (no inner row: every tap reaches a single row
    /// class at one edge), a 5×3 plane, channels past gemm's depth blocks, output channels not a
    /// multiple of the threads' 16-filter split.
    fn tapwise_cases() -> Vec<ConvGeometry> {
        let cases = vec![
            geometry(4, [5, 7], [4, 4], 3, 1, [1, 0], 1),
            geometry(3, [6, 5], [5, 5], 3, 1, [1, 0], 1),
            geometry(11, [3, 4], [2, 3], 3, 1, [1, 0], 1),
            geometry(5, [70, 9], [5, 3], 3, 1, [1, 0], 1),
            geometry(8, [300, 37], [4, 4], 3, 1, [1, 0], 1),
        ];
        for g in &cases {
            assert!(crate::tapwise::applies(g), "{g:?} goes tap by tap");
        }
        cases
    }

    #[test]
    fn tapwise_is_the_definition_forward_and_backward() {
        let not = [
            geometry(3, [5, 7], [4, 4], 3, 1, [1, 0], 1),   // 48 outputs per channel
            geometry(129, [5, 7], [4, 4], 3, 1, [1, 0], 1), // 2064: a batch for im2col's chunks
            geometry(2, [5, 7], [7, 7], 3, 1, [1, 0], 1),   // a plane of 49
            geometry(8, [5, 7], [4, 4], 3, 2, [1, 0], 1),   // strided
            geometry(8, [5, 7], [4, 4], 3, 1, [2, 0], 2),   // dilated
            geometry(8, [5, 7], [6, 6], 3, 1, [0, 0], 1),   // no padding
        ];
        for g in &not {
            assert!(!crate::tapwise::applies(g), "{g:?} is not for the tap-by-tap path");
        }
        for g in tapwise_cases() {
            let (x, w, dy) = (values(g.x_len(), 3), values(g.weight_len(), 4), values(g.y_len(), 5));
            let tolerance = f64::max(1e-4, 4e-7 * g.patch_len() as f64);
            let reference = reference_forward(&g, &x, &w);
            for (i, (&a, &b)) in forward(&g, &x, &w).iter().zip(&reference).enumerate() {
                assert!((a as f64 - b).abs() < tolerance, "{g:?}: output {i} is {a}, not {b}");
            }
            let (dx, dw) = backward(&g, &x, &w, &dy, true, true);
            let (ref_dx, ref_dw) = reference_backward(&g, &x, &w, &dy);
            for (i, (&a, &b)) in dx.unwrap().iter().zip(&ref_dx).enumerate() {
                assert!((a as f64 - b).abs() < tolerance, "{g:?}: input gradient {i} is {a}, not {b}");
            }
            for (i, (&a, &b)) in dw.unwrap().iter().zip(&ref_dw).enumerate() {
                assert!((a as f64 - b).abs() < 1e-3, "{g:?}: weight gradient {i} is {a}, not {b}");
            }
        }
    }

    #[test]
    fn tapwise_applies_the_epilogue_as_the_direct_path_does() {
        applies_the_epilogue_as_the_direct_path_does(tapwise_cases()[3], forward_with);
    }

    /// Planes wider than [`BAND_ABOVE_COLUMNS`] are multiplied in bands of output rows, each with
    /// its own share of the padding (none, top, bottom) and of the strided or dilated input rows.
    fn banded_cases() -> Vec<ConvGeometry> {
        let cases = vec![
            geometry(2, [3, 4], [40, 36], 3, 1, [1, 0], 1),
            geometry(1, [3, 4], [70, 66], 7, 2, [3, 0], 1), // the stem's shape
            geometry(3, [2, 3], [38, 30], 3, 1, [2, 0], 2), // dilated "same"
            geometry(2, [2, 3], [66, 64], 3, 2, [0, 1], 1), // "same" with the odd row after
            geometry(1, [2, 3], [40, 40], 5, 1, [0, 0], 1), // no padding: the bands overlap in x
            geometry(2, [70, 3], [28, 27], 3, 1, [1, 0], 1), // two blocks of input channels
        ];
        for g in &cases {
            assert!(g.in_bands(1), "{g:?} is multiplied in bands");
            assert!(g.bands(1).count() > 1, "{g:?} has several bands");
        }
        cases
    }

    /// The gradients by the chain rule over [`reference_forward`]'s sum: every product
    /// `x · w` it adds contributes `dy · w` to the input's and `dy · x` to the weight's.
    fn reference_backward(g: &ConvGeometry, x: &[f32], w: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (mut dx, mut dw) = (vec![0.0f64; g.x_len()], vec![0.0f64; g.weight_len()]);
        for b in 0..g.batch {
            for o in 0..g.out_channels {
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        let d = dy[((b * g.out_channels + o) * g.out_h + oy) * g.out_w + ox] as f64;
                        for c in 0..g.in_channels {
                            for ky in 0..g.kernel[0] {
                                for kx in 0..g.kernel[1] {
                                    let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.padding[0] as isize;
                                    let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.in_h as isize || ix >= g.in_w as isize {
                                        continue;
                                    }
                                    let xi = ((b * g.in_channels + c) * g.in_h + iy as usize) * g.in_w + ix as usize;
                                    let wi = ((o * g.in_channels + c) * g.kernel[0] + ky) * g.kernel[1] + kx;
                                    dx[xi] += d * w[wi] as f64;
                                    dw[wi] += d * x[xi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        (dx, dw)
    }

    #[test]
    fn backward_is_the_definitions_adjoint() {
        // The Winograd shapes' input gradients go by Winograd too (as a flipped convolution).
        for g in banded_cases().into_iter().chain(cases()).chain(winograd_cases()).chain([winograd_gated_case()]) {
            let (x, w, dy) = (values(g.x_len(), 3), values(g.weight_len(), 4), values(g.y_len(), 5));
            let (dx, dw) = backward(&g, &x, &w, &dy, true, true);
            let (dx, dw) = (dx.unwrap(), dw.unwrap());
            let (ref_dx, ref_dw) = reference_backward(&g, &x, &w, &dy);
            for (i, (&a, &b)) in dx.iter().zip(&ref_dx).enumerate() {
                assert!((a as f64 - b).abs() < 1e-3, "{g:?}: input gradient {i} is {a}, not {b}");
            }
            for (i, (&a, &b)) in dw.iter().zip(&ref_dw).enumerate() {
                assert!((a as f64 - b).abs() < 1e-2, "{g:?}: weight gradient {i} is {a}, not {b}");
            }
            let (only_x, none_w) = backward(&g, &x, &w, &dy, true, false);
            assert!(none_w.is_none() && only_x.unwrap() == dx, "{g:?}: input gradient alone");
            let (none_x, only_w) = backward(&g, &x, &w, &dy, false, true);
            assert!(none_x.is_none() && only_w.unwrap() == dw, "{g:?}: weight gradient alone");
        }
    }

    #[test]
    fn forward_in_bands_is_the_definition() {
        for g in banded_cases() {
            let (x, w) = (values(g.x_len(), 3), values(g.weight_len(), 4));
            let ours = forward(&g, &x, &w);
            let reference = reference_forward(&g, &x, &w);
            for (i, (&a, &b)) in ours.iter().zip(&reference).enumerate() {
                assert!((a as f64 - b).abs() < 1e-4, "{g:?}: output {i} is {a}, not {b}");
            }
        }
    }

    /// Fewer images than threads (batch 1 when serving): each image's bands, or its `col(x)` and
    /// filters, are shared among the threads, the epilogue applied per band or block. Pools of 1
    /// to 3 threads (3: bands rounded up to a multiple of 3, filters not a multiple of 8 apart),
    /// with a residual so that a band or block applying another's offset shows.
    #[test]
    fn one_image_shared_among_threads_is_the_definition() {
        let mut shapes: Vec<ConvGeometry> =
            banded_cases().into_iter().chain(cases()).map(|g| ConvGeometry { batch: 1, ..g }).collect();
        shapes.push(geometry(2, [5, 19], [9, 7], 3, 1, [1, 0], 1)); // 2 images on 3 threads
        shapes.push(geometry(1, [6, 13], [30, 30], 1, 1, [0, 0], 1)); // pointwise, by filters
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for g in &shapes {
                let (x, w) = (values(g.x_len(), 6), values(g.weight_len(), 7));
                let (scale, shift) = (values(g.out_channels, 8), values(g.out_channels, 9));
                let residual = values(g.y_len(), 10);
                let epilogue = Epilogue {
                    scale: &scale,
                    shift: &shift,
                    activation: EpilogueActivation::Relu { cap: 0.5 },
                    residual: Some(&residual),
                };
                let ours = pool.install(|| forward_with(g, &x, &w, Some(&epilogue)));
                let plane = g.out_plane();
                for (i, (&a, &y)) in ours.iter().zip(&reference_forward(g, &x, &w)).enumerate() {
                    let c = i / plane % g.out_channels;
                    let b = (y * scale[c] as f64 + shift[c] as f64 + residual[i] as f64).clamp(0.0, 0.5);
                    assert!((a as f64 - b).abs() < 1e-4, "{threads} threads, {g:?}: output {i} is {a}, not {b}");
                }
            }
        }
    }

    /// The backward of fewer images than threads goes by channels: both gradients against the
    /// definition's adjoint at batch 1 (and 2 images on 3 threads) in pools of 1 to 3 threads.
    #[test]
    fn backward_of_one_image_shared_among_threads_is_the_definitions_adjoint() {
        let mut shapes: Vec<ConvGeometry> =
            banded_cases().into_iter().chain(cases()).map(|g| ConvGeometry { batch: 1, ..g }).collect();
        shapes.push(geometry(2, [5, 19], [9, 7], 3, 1, [1, 0], 1));
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for g in &shapes {
                let (x, w, dy) = (values(g.x_len(), 11), values(g.weight_len(), 12), values(g.y_len(), 13));
                let (dx, dw) = pool.install(|| backward(g, &x, &w, &dy, true, true));
                let (ref_dx, ref_dw) = reference_backward(g, &x, &w, &dy);
                for (i, (&a, &b)) in dx.unwrap().iter().zip(&ref_dx).enumerate() {
                    assert!(
                        (a as f64 - b).abs() < 1e-3,
                        "{threads} threads, {g:?}: input gradient {i} is {a}, not {b}"
                    );
                }
                for (i, (&a, &b)) in dw.unwrap().iter().zip(&ref_dw).enumerate() {
                    assert!(
                        (a as f64 - b).abs() < 1e-2,
                        "{threads} threads, {g:?}: weight gradient {i} is {a}, not {b}"
                    );
                }
            }
        }
    }

    /// The loss `⟨dy, y(x, w)⟩` is linear in `x` for a fixed `w` (and in `w` for a fixed `x`), so
    /// its partial derivative with respect to `x[i]` is the loss at the unit vector `e_i`.
    #[test]
    fn gradients_are_the_definitions_partial_derivatives() {
        type Backward = fn(&ConvGeometry, &[f32], &[f32], &[f32], bool, bool) -> (Option<Vec<f32>>, Option<Vec<f32>>);
        let paths: [(&str, Backward); 4] = [
            ("as chosen", backward),
            ("by images", backward_by_images),
            ("by channels, 2 threads", |g, x, w, dy, i, k| backward_by_channels(g, x, w, dy, i, k, 2)),
            ("by channels, 3 threads", |g, x, w, dy, i, k| backward_by_channels(g, x, w, dy, i, k, 3)),
        ];
        // Finite sums over every input and weight: the many-channel cases (thousands of weights)
        // are left to `backward_is_the_definitions_adjoint`.
        let small = || cases().into_iter().filter(|g| g.weight_len() < 1000);
        for (path, g) in paths.into_iter().flat_map(|p| small().map(move |g| (p, g))) {
            let (path, backward) = path;
            let g = &g;
            let (x, w, dy) = (values(g.x_len(), 3), values(g.weight_len(), 4), values(g.y_len(), 5));
            let (dx, dw) = backward(g, &x, &w, &dy, true, true);
            let (dx, dw) = (dx.unwrap(), dw.unwrap());
            let loss = |x: &[f32], w: &[f32]| -> f64 {
                reference_forward(g, x, w).iter().zip(&dy).map(|(y, &d)| y * d as f64).sum()
            };
            let mut unit = vec![0.0f32; g.x_len()];
            for i in 0..g.x_len() {
                unit[i] = 1.0;
                let expected = loss(&unit, &w);
                unit[i] = 0.0;
                assert!(
                    (dx[i] as f64 - expected).abs() < 1e-3,
                    "{path}, {g:?}: input gradient {i} is {}, not {expected}",
                    dx[i]
                );
            }
            let mut unit = vec![0.0f32; g.weight_len()];
            for i in 0..g.weight_len() {
                unit[i] = 1.0;
                let expected = loss(&x, &unit);
                unit[i] = 0.0;
                assert!(
                    (dw[i] as f64 - expected).abs() < 1e-3,
                    "{path}, {g:?}: weight gradient {i} is {}, not {expected}",
                    dw[i]
                );
            }
            // One gradient asked for: that one alone, the same values.
            let close = |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-5);
            let (only_x, none_w) = backward(g, &x, &w, &dy, true, false);
            assert!(none_w.is_none() && close(&only_x.unwrap(), &dx), "{path}, {g:?}: input gradient alone");
            let (none_x, only_w) = backward(g, &x, &w, &dy, false, true);
            assert!(none_x.is_none() && close(&only_w.unwrap(), &dw), "{path}, {g:?}: weight gradient alone");
        }
    }
}
