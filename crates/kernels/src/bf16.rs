//! Mixed precision: the convolutions' matrix products with bfloat16 operands and float32 sums, on
//! CPUs with AVX-512-BF16 (`vdpbf16ps`: 32 products per instruction, twice float32's 16 FMAs).
//!
//! Opt-in, for the threads of a [`pool`] (a training run's) or process-wide ([`set_enabled`], or
//! `DEEPTUNE_PRECISION=bf16` in the environment, as the benchmarks use):
//! everything else — activations, weights, optimizer state, batch norm, the sums themselves —
//! stays float32; only each product's operands are rounded (to nearest even) to bfloat16 as they
//! are packed. That is the usual mixed-precision recipe (PyTorch's `autocast(dtype=bfloat16)` on
//! CPU does the same to convolutions), so weights keep their float32 master copy.
//!
//! The product is a small Goto-style gemm: per block of `KC` values of the shared dimension, the
//! left operand is packed into `MR`-row panels (pairs of consecutive `k` in one 32-bit word, the
//! unit `vdpbf16ps` broadcasts) and the right operand into `NR`-column panels (pairs of `k`
//! interleaved per column); the microkernel keeps an `MR × NR` block of float32 sums in 24 of the
//! 32 vector registers. Where the CPU lacks the instruction, [`enabled`] stays false.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::conv::{ConvGeometry, View};

/// Rows of the destination per microkernel call: one 32-bit broadcast each.
const MR: usize = 12;
/// Columns per microkernel call: two 16-lane vectors of float32 sums per row.
const NR: usize = 32;
/// Values of the shared dimension per block (even): a right panel is `KC/2 × NR` words (16 KB),
/// kept in L1 while every left panel streams past it.
const KC: usize = 256;

const UNSET: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNSET);

/// Whether this CPU computes bfloat16 products natively (AVX-512-BF16).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Turns bfloat16 products on or off for the whole process (all threads, every later product).
/// Returns whether they are now on: asking for them on a CPU without AVX-512-BF16 leaves them off.
pub fn set_enabled(on: bool) -> bool {
    let on = on && supported();
    STATE.store(if on { ON } else { OFF }, Ordering::Relaxed);
    on
}

thread_local! {
    /// This thread's own setting, over the process-wide one: set on the threads of a [`pool`].
    static THREAD_SETTING: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// A rayon pool, as many threads as the caller's (`rayon::current_num_threads`, the global pool's
/// outside any), whose products run in bfloat16 if `on` and the CPU can, whatever the process-wide
/// setting: a training run computes inside it
/// (`pool.install`), so that predictions served by the same process meanwhile — on other
/// threads — keep the process's precision. Also returns whether the pool's products are
/// bfloat16.
pub fn pool(on: bool) -> Result<(rayon::ThreadPool, bool), rayon::ThreadPoolBuildError> {
    let on = on && supported();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .thread_name(|i| format!("deeptune-train-{i}"))
        .start_handler(move |_| THREAD_SETTING.with(|setting| setting.set(Some(on))))
        .build()?;
    Ok((pool, on))
}

/// Whether products run in bfloat16 on this thread: its [`pool`]'s setting, else
/// [`set_enabled`]'s last word, else `DEEPTUNE_PRECISION=bf16` in the environment (and a CPU that
/// can).
pub fn enabled() -> bool {
    if let Some(on) = THREAD_SETTING.with(|setting| setting.get()) {
        return on;
    }
    match STATE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let wanted = std::env::var("DEEPTUNE_PRECISION").is_ok_and(|v| v.eq_ignore_ascii_case("bf16"));
            // A racing `set_enabled` wins: only replace the unset state.
            let state = if wanted && supported() { ON } else { OFF };
            let _ = STATE.compare_exchange(UNSET, state, Ordering::Relaxed, Ordering::Relaxed);
            STATE.load(Ordering::Relaxed) == ON
        }
    }
}

/// `x` rounded to the nearest bfloat16 (ties to even), as its 16 bits: what `vcvtneps2bf16` gives
/// for normal numbers (the instruction also flushes subnormals to zero; packing in scalar code
/// keeps them, a difference below 1e-38).
#[inline(always)]
pub fn round_bits(x: f32) -> u32 {
    let bits = x.to_bits();
    if x.is_nan() {
        // Quiet the NaN; rounding could carry its payload into the exponent (infinity).
        return (bits >> 16) | 0x40;
    }
    (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
}

/// `x` rounded to bfloat16 and back: the value the products see.
pub fn round(x: f32) -> f32 {
    f32::from_bits(round_bits(x) << 16)
}

/// A left operand packed once for many products: a convolution's filters, which every chunk of
/// images (and every band of one) multiplies. Packing them per product cost ResNet-50's
/// bfloat16 inference at 112 px ~4 % of its time, the 7×7 and 14×14 layers' filters packed again
/// for each of their 2–8 chunks.
pub(crate) struct PackedLeft {
    m: usize,
    k: usize,
    /// Per block of [`KC`] values of `k`, in order: its row panels as the product reads them.
    words: Vec<u32>,
}

impl PackedLeft {
    /// `lhs` (`m × k`) packed, its panels shared among the rayon pool's threads (one thread
    /// packing filters the others wait for cost more than each packing its own as before). Call
    /// only where [`supported`].
    pub(crate) fn new(m: usize, k: usize, lhs: View) -> PackedLeft {
        Self::many(m, k, &[lhs]).pop().expect("one operand")
    }

    /// Several `m × k` operands packed in one parallel pass (a fork and join per operand cost
    /// more than packing the 64 × 64 filters of Winograd's 16 points).
    pub(crate) fn many(m: usize, k: usize, operands: &[View]) -> Vec<PackedLeft> {
        use rayon::prelude::*;
        assert!(supported(), "bfloat16 packing on a CPU without AVX-512-BF16");
        for lhs in operands {
            if m > 0 && k > 0 {
                assert!((m - 1) * lhs.row + (k - 1) * lhs.col < lhs.data.len(), "left operand too small");
            }
        }
        let row_panels = m.div_ceil(MR);
        let mut all: Vec<Vec<u32>> = operands.iter().map(|_| spare_words(row_panels * MR * k.div_ceil(2))).collect();
        // Per operand, per block of `k`, per row panel: its part of the operand's words.
        let mut panels = Vec::with_capacity(operands.len() * row_panels * k.div_ceil(KC));
        for (lhs, words) in operands.iter().zip(&mut all) {
            let mut rest = &mut words[..];
            for kb in (0..k).step_by(KC) {
                let kc = KC.min(k - kb);
                for panel in 0..row_panels {
                    let (words, after) = std::mem::take(&mut rest).split_at_mut(kc.div_ceil(2) * MR);
                    panels.push((*lhs, kb..kb + kc, panel * MR..(panel * MR + MR).min(m), words));
                    rest = after;
                }
            }
        }
        panels.into_par_iter().for_each(|(lhs, values, rows, words)| {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has the instructions (asserted); `lhs`'s bounds were checked above.
            unsafe {
                x86::pack_left(lhs, rows, values.start, values.len(), words)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (lhs, values, rows, words);
        });
        all.into_iter().map(|words| PackedLeft { m, k, words }).collect()
    }

    /// Bytes of packed values.
    pub(crate) fn bytes(&self) -> usize {
        std::mem::size_of_val(self.words.as_slice())
    }

    /// The row panels of the block of `k` that starts at `kb` (a multiple of [`KC`]).
    fn block(&self, kb: usize) -> &[u32] {
        let (row_panels, pairs) = (self.m.div_ceil(MR), KC.min(self.k - kb).div_ceil(2));
        &self.words[row_panels * MR * (kb / 2)..][..row_panels * MR * pairs]
    }
}

impl Drop for PackedLeft {
    fn drop(&mut self) {
        let words = std::mem::take(&mut self.words);
        SPARE_WORDS.with(|spare| {
            let mut spare = spare.borrow_mut();
            spare.push(words);
            // Keep the largest: a network's filters take turns, and a buffer grown once stays
            // large enough for the smaller ones.
            if spare.len() > SPARE_BUFFERS {
                let smallest = (0..spare.len()).min_by_key(|&i| spare[i].len()).expect("not empty");
                spare.swap_remove(smallest);
            }
        });
    }
}

/// Packed filters' buffers a thread keeps for the next convolution's (a fresh multi-megabyte
/// buffer is a `memset` or page faults, on the one thread that allocates it).
const SPARE_BUFFERS: usize = 4;

thread_local! {
    /// Each buffer's whole length written before (with filters or zeros).
    static SPARE_WORDS: std::cell::RefCell<Vec<Vec<u32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer of at least `len` words, what it holds stale: the smallest spare one that is long
/// enough, else the largest grown (zeros written only where it grows), else a new one.
fn spare_words(len: usize) -> Vec<u32> {
    SPARE_WORDS.with(|spare| {
        let mut spare = spare.borrow_mut();
        let fit = (0..spare.len()).filter(|&i| spare[i].len() >= len).min_by_key(|&i| spare[i].len());
        let pick = fit.or_else(|| (0..spare.len()).max_by_key(|&i| spare[i].len()));
        let mut words = pick.map(|i| spare.swap_remove(i)).unwrap_or_default();
        if words.len() < len {
            words.resize(len, 0);
        }
        words
    })
}

/// The right operand of a convolution's product over several images side by side — `col(x)`,
/// `[in_channels · taps, images · out_plane]` — read straight from the input as it is packed: no
/// im2col copy in float32 first (ResNet-50's bfloat16 inference at 112 px spent ~9 % of its time
/// writing `col(x)` and ~3 % reading it back to pack it).
///
/// Per tap, each 16 columns of a panel are one to a few masked loads where the convolution has
/// stride 1 and "same" width (one per image the columns span), one masked gather otherwise; the
/// masks are the outputs whose input lies inside the plane (padding reads as zeros).
pub(crate) struct Patches<'a> {
    data: &'a [f32],
    layout: &'a PatchLayout,
}

/// Where [`Patches`] read, for every chunk of the same number of images: built once per layer.
pub(crate) struct PatchLayout {
    channels: usize,
    /// Values from one input channel to the next.
    channel_stride: usize,
    /// Values of a channel the patches read from its start (the plane, or a band of its rows).
    plane_len: usize,
    taps: usize,
    image_len: usize,
    images: usize,
    /// Columns: images × output plane.
    n: usize,
    /// Masked loads per (tap, group of 16 columns): `slots` of them for each, as
    /// `loads[(tap · groups + group) · slots..][..slots]` (mask, offset from channel 0's first
    /// value); unused slots have an empty mask. One slot per image a group's columns span.
    loads: Vec<(u16, isize)>,
    slots: usize,
    /// For other convolutions (strided: consecutive outputs read inputs `stride` apart): per
    /// (tap, group), the 16 columns' offsets for one masked gather (its mask the only slot's).
    gathers: Vec<[i32; 16]>,
}

impl<'a> Patches<'a> {
    /// The patches of `layout` in `data`: image `b`'s channel `c` at
    /// `data[b · image_len + c · channel_stride]`.
    pub(crate) fn new(layout: &'a PatchLayout, data: &'a [f32]) -> Patches<'a> {
        let images = layout.images;
        // Every lane a mask keeps lies inside a channel's `plane_len` values (checked as the
        // layout was built), so within these values: what makes the loads sound.
        let image_extent = layout.channels.checked_sub(1).map_or(0, |c| c * layout.channel_stride + layout.plane_len);
        assert!(images == 0 || (images - 1) * layout.image_len + image_extent <= data.len());
        assert!(layout.gathers.is_empty() || data.len() <= i32::MAX as usize, "offsets past 32 bits");
        Patches { data, layout }
    }
}

impl std::ops::Deref for Patches<'_> {
    type Target = PatchLayout;

    fn deref(&self) -> &PatchLayout {
        self.layout
    }
}

/// Output planes up to this many pixels read strided patches by gathers: with rows of 4 to 7
/// outputs, im2col's copies are mostly bookkeeping (ResNet-50's stride-2 layers into 7×7 and 4×4
/// planes ran a fifth faster by gathers); for a 14×14 plane its row copies were a tenth faster.
const GATHERED_PLANE: usize = 64;

impl PatchLayout {
    /// Whether a convolution's `col(x)` is better read as patches than copied by im2col.
    pub(crate) fn applies(g: &ConvGeometry) -> bool {
        g.flat_shift(0, 0).is_some() || g.out_plane() <= GATHERED_PLANE
    }

    /// `col(x)` of `images` images of `g`, each `image_len` values apart.
    pub(crate) fn new(g: &ConvGeometry, image_len: usize, images: usize) -> PatchLayout {
        Self::with_channel_stride(g, image_len, images, g.in_plane())
    }

    /// `col(x)` of one image's band of output rows (`g`, as `ConvGeometry::output_rows` makes it,
    /// reading only the band's rows of the input), the image's channels `channel_stride` values
    /// (its whole plane) apart.
    pub(crate) fn band(g: &ConvGeometry, channel_stride: usize) -> PatchLayout {
        assert!(g.batch == 1 && channel_stride >= g.in_plane(), "a band of one image's rows");
        Self::with_channel_stride(g, g.in_channels * channel_stride, 1, channel_stride)
    }

    fn with_channel_stride(g: &ConvGeometry, image_len: usize, images: usize, channel_stride: usize) -> PatchLayout {
        let (in_plane, plane) = (g.in_plane(), g.out_plane());
        assert!(images == 0 || g.in_channels * channel_stride <= image_len, "images overlap");
        let n = images * plane;
        let groups = n.div_ceil(NR) * (NR / 16);
        let layout = PatchLayout {
            channels: g.in_channels,
            channel_stride,
            plane_len: in_plane,
            taps: g.taps(),
            image_len,
            images,
            n,
            loads: Vec::new(),
            slots: 1,
            gathers: Vec::new(),
        };
        if g.flat_shift(0, 0).is_none() {
            return layout.gathered(g, groups);
        }
        // 16 columns span at most this many images (one more than fit whole).
        let slots = (16 / plane.max(1) + 2).min(16);
        let mut loads = Vec::with_capacity(g.taps() * groups * slots);
        for ky in 0..g.kernel[0] {
            let rows = g.valid(0, ky, g.out_h, g.in_h);
            for kx in 0..g.kernel[1] {
                let cols = g.valid(1, kx, g.out_w, g.in_w);
                let shift = g.flat_shift(ky, kx).expect("a stride-1 same-width convolution");
                for group in 0..groups {
                    let (first, end) = (group * 16, (group * 16 + 16).min(n));
                    let group_loads = loads.len();
                    let mut j = first;
                    while j < end {
                        let (b, o) = (j / plane, j % plane);
                        let len = (plane - o).min(end - j);
                        let mut mask = 0u16;
                        for l in 0..len {
                            let (oy, ox) = ((o + l) / g.out_w, (o + l) % g.out_w);
                            if rows.contains(&oy) && cols.contains(&ox) {
                                // Reads stay inside image `b`'s plane (what makes the loads sound).
                                let at = (o + l) as isize + shift;
                                assert!(0 <= at && at < in_plane as isize, "a patch outside the plane");
                                mask |= 1 << (j - first + l);
                            }
                        }
                        loads.push((mask, (b * image_len + o) as isize + shift - (j - first) as isize));
                        j += len;
                    }
                    assert!(loads.len() - group_loads <= slots);
                    loads.resize(group_loads + slots, (0, 0));
                }
            }
        }
        PatchLayout { loads, slots, ..layout }
    }

    /// [`PatchLayout::new`] for any other geometry: one gather per tap and 16 columns.
    fn gathered(self, g: &ConvGeometry, groups: usize) -> PatchLayout {
        let plane = g.out_plane();
        assert!(self.images * self.image_len <= i32::MAX as usize, "offsets past 32 bits");
        // Per column: its image's first value and the input position of its first tap.
        let columns: Vec<(usize, isize, isize)> = (0..self.images)
            .flat_map(|b| (0..plane).map(move |o| (b, o)))
            .map(|(b, o)| {
                let iy = (o / g.out_w * g.stride[0]) as isize - g.padding[0] as isize;
                let ix = (o % g.out_w * g.stride[1]) as isize - g.padding[1] as isize;
                (b * self.image_len, iy, ix)
            })
            .collect();
        let (mut loads, mut gathers) = (Vec::new(), Vec::new());
        for ky in 0..g.kernel[0] {
            for kx in 0..g.kernel[1] {
                let (dy, dx) = ((ky * g.dilation[0]) as isize, (kx * g.dilation[1]) as isize);
                for group in columns.chunks(16).chain(std::iter::repeat_n(&[][..], groups - self.n.div_ceil(16))) {
                    let (mut mask, mut offsets) = (0u16, [0i32; 16]);
                    for (lane, &(image, iy, ix)) in group.iter().enumerate() {
                        let (iy, ix) = (iy + dy, ix + dx);
                        if (0..g.in_h as isize).contains(&iy) && (0..g.in_w as isize).contains(&ix) {
                            // Inside the image's plane (what makes the gathers sound).
                            offsets[lane] = (image + iy as usize * g.in_w + ix as usize) as i32;
                            mask |= 1 << lane;
                        }
                    }
                    loads.push((mask, 0));
                    gathers.push(offsets);
                }
            }
        }
        PatchLayout { loads, slots: 1, gathers, ..self }
    }

    /// Images side by side.
    pub(crate) fn images(&self) -> usize {
        self.images
    }

    /// A tap's gathers, one per group (none where loads are contiguous).
    fn tap_gathers(&self, tap: usize, groups: usize) -> &[[i32; 16]] {
        if self.gathers.is_empty() { &[] } else { &self.gathers[tap * groups..][..groups] }
    }
}

/// Where a product's right operand comes from.
#[derive(Clone, Copy)]
pub(crate) enum Right<'a> {
    View(View<'a>),
    /// `col(x)` of these patches from this input channel on (its rows: that channel's taps, the
    /// next channel's, …).
    Patches(&'a Patches<'a>, usize),
    /// `col(x)ᵀ` of these patches from this input channel on: its rows the images' outputs, its
    /// columns that channel's taps, the next channel's, … (a weight gradient's right operand).
    Transposed(&'a Patches<'a>, usize),
}

/// Where a product's left operand comes from.
#[derive(Clone, Copy)]
pub(crate) enum Left<'a> {
    View(View<'a>),
    Packed(&'a PackedLeft),
}

/// [`multiply_with`] of packed filters by a view into a slice: `dst (m×n, row stride dst_row) =
/// [dst +] left · rhs`, the destination's bounds checked.
pub(crate) fn multiply_packed(
    n: usize,
    dst: &mut [f32],
    dst_row: usize,
    accumulate: bool,
    left: &PackedLeft,
    rhs: View,
) {
    let (m, k) = (left.m, left.k);
    assert!(m == 0 || n == 0 || (m - 1) * dst_row + n <= dst.len(), "product destination too small");
    // SAFETY: the destination's bounds were just checked and it is borrowed mutably; packed
    // filters exist only where the CPU has the instructions.
    unsafe { multiply_with(m, n, k, dst.as_mut_ptr(), dst_row, accumulate, Left::Packed(left), Right::View(rhs)) }
}

/// `dst (m×n, row stride dst_row) = [dst +] left (m×k) · right (k×n)` with bfloat16 operands and
/// float32 sums, the operands given either way.
///
/// # Safety
/// As `conv::multiply_raw`'s: `dst + r·dst_row + c` for `r < m`, `c < n` valid floats nothing
/// else touches during the call, initialised where `accumulate` (otherwise the first block of `k`
/// stores them before any later block adds to them). The operands' bounds are checked here
/// (patches' columns are their images' outputs, their rows the input channels'). Call only where
/// [`enabled`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn multiply_with(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_row: usize,
    accumulate: bool,
    left: Left,
    right: Right,
) {
    if m == 0 || n == 0 {
        return;
    }
    match left {
        Left::View(lhs) => {
            assert!(k == 0 || (m - 1) * lhs.row + (k - 1) * lhs.col < lhs.data.len(), "left operand too small")
        }
        Left::Packed(packed) => assert!(packed.m == m && packed.k == k, "packed for another product"),
    }
    match right {
        Right::View(rhs) => {
            assert!(k == 0 || (k - 1) * rhs.row + (n - 1) * rhs.col < rhs.data.len(), "right operand too small")
        }
        Right::Patches(patches, first) => {
            assert!(
                n == patches.n && (k == 0 || first + (k - 1) / patches.taps < patches.channels),
                "patches too small"
            )
        }
        Right::Transposed(patches, first) => {
            assert!(k == patches.n && first + (n - 1) / patches.taps < patches.channels, "patches too small")
        }
    }
    if k == 0 {
        if !accumulate {
            // SAFETY: the destination's rows are the caller's to write.
            unsafe { crate::conv::zero_rows(m, n, dst, dst_row) };
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        debug_assert!(supported());
        // SAFETY: the CPU has the instructions (the caller's contract, as packed filters' being
        // there shows); operands checked above; the destination is the caller's.
        unsafe { x86::product(m, n, k, dst, dst_row, accumulate, left, right) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dst, dst_row, accumulate, left, right);
        unreachable!("bfloat16 products are only enabled on x86-64");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{KC, Left, MR, NR, Patches, Right, View, round_bits};
    use crate::simd::x86::{first_lanes, transpose16};

    /// 16 words on a cache line of their own: the right panels' unit, so that their loads and
    /// stores (whole vectors) never straddle two lines.
    #[derive(Clone, Copy)]
    #[repr(C, align(64))]
    struct Line([u32; 16]);

    thread_local! {
        /// Packed panels, reused across calls: (left block, right block).
        static PACKED: std::cell::RefCell<(Vec<u32>, Vec<Line>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }

    /// `dst (m×n) = [dst +] left · right`, a block of [`KC`] values of `k` at a time: the block's
    /// left panels (packed now, or before), its right panels packed now, then every `MR × NR`
    /// block of the destination by the microkernel.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn product(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        dst_row: usize,
        accumulate: bool,
        left: Left,
        right: Right,
    ) {
        let row_panels = m.div_ceil(MR);
        let col_panels = n.div_ceil(NR);
        PACKED.with(|packed| {
            let (left_words, right_lines) = &mut *packed.borrow_mut();
            let mut kb = 0;
            while kb < k {
                let kc = KC.min(k - kb);
                let pairs = kc.div_ceil(2);
                // The packers write every word (padding included), so the buffers need no clearing.
                let left_block: &[u32] = match left {
                    Left::View(lhs) => {
                        left_words.resize(left_words.len().max(row_panels * pairs * MR), 0);
                        for panel in 0..row_panels {
                            let rows = panel * MR..(panel * MR + MR).min(m);
                            pack_left(lhs, rows, kb, kc, &mut left_words[panel * pairs * MR..][..pairs * MR]);
                        }
                        left_words
                    }
                    Left::Packed(packed) => packed.block(kb),
                };
                let lines = (col_panels * pairs * NR).div_ceil(16);
                right_lines.resize(right_lines.len().max(lines), Line([0; 16]));
                // SAFETY: `Line` is 16 `u32`s without padding (`repr(C)`, 64 bytes).
                let right_words: &mut [u32] =
                    unsafe { std::slice::from_raw_parts_mut(right_lines.as_mut_ptr().cast(), 16 * right_lines.len()) };
                match right {
                    Right::View(rhs) => {
                        for panel in 0..col_panels {
                            let cols = panel * NR..(panel * NR + NR).min(n);
                            pack_right(rhs, cols, kb, kc, &mut right_words[panel * pairs * NR..][..pairs * NR]);
                        }
                    }
                    // SAFETY: the rows `kb..kb + kc` are the patches' (the caller's contract).
                    Right::Patches(patches, first) => unsafe {
                        pack_patches(patches, first, kb, kc, &mut right_words[..col_panels * pairs * NR])
                    },
                    Right::Transposed(patches, first) => {
                        for panel in 0..col_panels {
                            let out = &mut right_words[panel * pairs * NR..][..pairs * NR];
                            for half in (0..NR).step_by(16) {
                                let rows = (panel * NR + half).min(n)..(panel * NR + half + 16).min(n);
                                // SAFETY: the columns `< n` are rows of the patches (the caller's
                                // contract); an empty range packs zeros.
                                unsafe { pack_patch_lines(patches, first, rows, kb, kc, out, half) };
                            }
                        }
                    }
                }
                let add = accumulate || kb > 0;
                for cp in 0..col_panels {
                    let c0 = cp * NR;
                    let cols = NR.min(n - c0);
                    let b = right_words[cp * pairs * NR..].as_ptr();
                    for rp in 0..row_panels {
                        let r0 = rp * MR;
                        let rows = MR.min(m - r0);
                        let a = left_block[rp * pairs * MR..][..pairs * MR].as_ptr();
                        // SAFETY: the panels hold `pairs` words per row/column; the destination
                        // block is within `m × n` (the caller's contract). A short last panel
                        // multiplies only the rows and columns it has, not its zeros: 64 filters
                        // are five panels and four rows (a ninth of the products on zeros), a
                        // 4×4 plane of one image 16 columns (half).
                        unsafe {
                            let c = dst.add(r0 * dst_row + c0);
                            match (rows, cols) {
                                (..=4, ..=16) => micro::<4, 1>(pairs, a, b, c, dst_row, rows, cols, add),
                                (..=4, _) => micro::<4, 2>(pairs, a, b, c, dst_row, rows, cols, add),
                                (5..=8, ..=16) => micro::<8, 1>(pairs, a, b, c, dst_row, rows, cols, add),
                                (5..=8, _) => micro::<8, 2>(pairs, a, b, c, dst_row, rows, cols, add),
                                (_, ..=16) => micro::<MR, 1>(pairs, a, b, c, dst_row, rows, cols, add),
                                _ => micro::<MR, 2>(pairs, a, b, c, dst_row, rows, cols, add),
                            }
                        };
                    }
                }
                kb += kc;
            }
        });
    }

    /// Rows `kb..kb + kc` of `patches`' `col(x)` from input channel `first` on, every column
    /// panel, as `[panel][pair][column]` words (columns past the images' as zeros): per pair of
    /// rows and 16 columns, each row's masked loads, both rows converted at once, their halves
    /// interleaved into words.
    ///
    /// # Safety
    /// The rows must exist: `first + (kb + kc − 1) / taps` an input channel of the data.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack_patches(patches: &Patches, first: usize, kb: usize, kc: usize, out: &mut [u32]) {
        let pairs = kc.div_ceil(2);
        let groups = out.len() / pairs / 16;
        let slots = patches.slots;
        assert!(out.len() == groups * 16 * pairs && patches.loads.len() == patches.taps * groups * slots);
        // 16-bit element `2i` of the result: row 0's column `i`; `2i + 1`: row 1's.
        const INTERLEAVE: [u16; 32] = [
            0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14,
            30, 15, 31,
        ];
        // SAFETY: a 64-byte read of a 64-byte array.
        let interleave = unsafe { _mm512_loadu_si512(INTERLEAVE.as_ptr().cast()) };
        // Row `row`'s base pointer and its tap's loads (all groups').
        let row_loads = |row: usize| {
            let (channel, tap) = (first + row / patches.taps, row % patches.taps);
            let base = patches.data.as_ptr().wrapping_add(channel * patches.channel_stride);
            (base, &patches.loads[tap * groups * slots..][..groups * slots], patches.tap_gathers(tap, groups))
        };
        for pair in 0..pairs {
            let row = kb + 2 * pair;
            let (low_base, low_loads, low_gathers) = row_loads(row);
            let high = (2 * pair + 1 < kc).then(|| row_loads(row + 1));
            for group in 0..groups {
                // SAFETY: the rows' channels are the caller's (this function's contract).
                let low = unsafe { lanes(low_base, &low_loads[group * slots..][..slots], low_gathers.get(group)) };
                let high = match high {
                    // SAFETY: as above.
                    Some((base, loads, gathers)) => unsafe {
                        lanes(base, &loads[group * slots..][..slots], gathers.get(group))
                    },
                    None => _mm512_setzero_ps(),
                };
                // SAFETY: a reinterpretation of 512 bits.
                let halves = unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(high, low)) };
                let words = _mm512_permutexvar_epi16(interleave, halves);
                let at = ((group / 2) * pairs + pair) * NR + (group % 2) * 16;
                // SAFETY: `at + 16 ≤ out.len()` (`group / 2` < panels, `pair` < pairs).
                unsafe { _mm512_storeu_si512(out[at..][..16].as_mut_ptr().cast(), words) };
            }
        }
    }

    /// Rows `rows` (at most 16) of `patches`' `col(x)` from input channel `first` on, values
    /// (output columns) `kb..kb + kc`, packed as `pack_lines` packs a matrix's lines, into
    /// `out[p·NR + lane + l]`: each row's 32 values of a step are its loads for two groups of 16
    /// columns (`kb` is a multiple of 32, so groups align), converted at once; then the 16 × 16
    /// words transposed. Lanes past `rows` are zeros.
    ///
    /// # Safety
    /// The rows must exist: `first + (rows.end − 1) / taps` an input channel of the data.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack_patch_lines(
        patches: &Patches,
        first: usize,
        rows: std::ops::Range<usize>,
        kb: usize,
        kc: usize,
        out: &mut [u32],
        lane: usize,
    ) {
        let (slots, groups) = (patches.slots, patches.loads.len() / patches.taps / patches.slots);
        assert!(rows.len() <= 16 && lane + 16 <= NR && out.len() >= kc.div_ceil(2) * NR && kb.is_multiple_of(32));
        assert!(kb + kc <= patches.n && patches.n <= groups * 16);
        let mut lines = [(std::ptr::null::<f32>(), &patches.loads[..0], &patches.gathers[..0]); 16];
        let count = rows.len();
        for (line, row) in lines.iter_mut().zip(rows) {
            let (channel, tap) = (first + row / patches.taps, row % patches.taps);
            let base = patches.data.as_ptr().wrapping_add(channel * patches.channel_stride);
            *line = (base, &patches.loads[tap * groups * slots..][..groups * slots], patches.tap_gathers(tap, groups));
        }
        let mut p = 0;
        while 2 * p < kc {
            let group = (kb + 2 * p) / 16;
            let mut words = [_mm512_setzero_si512(); 16];
            for (w, &(base, loads, gathers)) in words.iter_mut().zip(&lines[..count]) {
                // SAFETY: the rows' channels are the caller's; `group + 1 < groups` (`kb + 2p`,
                // a multiple of 32, is below `n`).
                let (lo, hi) = unsafe {
                    (
                        lanes(base, &loads[group * slots..][..slots], gathers.get(group)),
                        lanes(base, &loads[(group + 1) * slots..][..slots], gathers.get(group + 1)),
                    )
                };
                // SAFETY: a reinterpretation of 512 bits.
                *w = unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)) };
            }
            let pairs = transpose16(words);
            for (q, pair) in pairs.iter().enumerate().take((kc - 2 * p).min(32).div_ceil(2)) {
                // SAFETY: `p + q` < `kc/2` rounded up and `lane + 16 ≤ NR` (asserted).
                unsafe { _mm512_storeu_si512(out.as_mut_ptr().add((p + q) * NR + lane).cast(), *pair) };
            }
            p += 16;
        }
    }

    /// The 16 values a tap's masked loads read for one group of columns from `base` (a channel's
    /// plane in the first image).
    ///
    /// # Safety
    /// The lanes in each load's mask must be readable (`Patches::new` checks that they lie inside
    /// an image's plane; `base` must be a channel's).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn lanes(base: *const f32, loads: &[(u16, isize)], gather: Option<&[i32; 16]>) -> __m512 {
        if let Some(offsets) = gather {
            // SAFETY: as below; the lanes in the mask read inside an image's plane.
            return unsafe {
                let offsets = _mm512_loadu_si512(offsets.as_ptr().cast());
                _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), loads[0].0, offsets, base)
            };
        }
        let mut lanes = _mm512_setzero_ps();
        for &(mask, offset) in loads {
            // SAFETY: the caller's; an empty mask reads nothing.
            lanes = unsafe { _mm512_mask_loadu_ps(lanes, mask, base.wrapping_offset(offset)) };
        }
        lanes
    }

    /// Rows `rows` of `lhs`, values `kb..kb + kc`, as `[pair][row]` words (`bf16(a[r][2p]) |
    /// bf16(a[r][2p + 1]) << 16`); every word of `out` is written, rows past `m` and the odd
    /// last value as zeros.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) fn pack_left(lhs: View, rows: std::ops::Range<usize>, kb: usize, kc: usize, out: &mut [u32]) {
        let start = rows.start * lhs.row + kb * lhs.col;
        if lhs.col == 1 {
            // SAFETY: rows `< m` of values `< k` lie within the operand (checked by the caller).
            unsafe { pack_lines(lhs.data[start..].as_ptr(), lhs.row, rows.len(), kc, out, MR, 0, MR) };
        } else if lhs.row == 1 {
            // SAFETY: as above.
            unsafe { pack_across(lhs.data[start..].as_ptr(), lhs.col, rows.len(), kc, out, MR, 0, MR) };
        } else {
            out.fill(0);
            for (i, r) in rows.enumerate() {
                pack_strided(|kk| lhs.data[r * lhs.row + (kb + kk) * lhs.col], kc, out, MR, i);
            }
        }
    }

    /// Columns `cols` of `rhs`, values `kb..kb + kc`, as `[pair][column]` words; every word of
    /// `out` is written, columns past `n` and the odd last value as zeros.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    fn pack_right(rhs: View, cols: std::ops::Range<usize>, kb: usize, kc: usize, out: &mut [u32]) {
        let width = cols.len();
        if rhs.col == 1 || rhs.row == 1 {
            for first in (0..NR).step_by(16) {
                let lines = width.saturating_sub(first).min(16);
                // Not dereferenced where `lines` is 0 (a panel's padding).
                let data = rhs.data.as_ptr().wrapping_add(kb * rhs.row + (cols.start + first) * rhs.col);
                // SAFETY: columns `< n` of values `< k` lie within the operand (checked by the
                // caller); no other lane is read.
                unsafe {
                    if rhs.col == 1 {
                        pack_across(data, rhs.row, lines, kc, out, NR, first, 16);
                    } else {
                        pack_lines(data, rhs.col, lines, kc, out, NR, first, 16);
                    }
                }
            }
        } else {
            out.fill(0);
            for (j, c) in cols.enumerate() {
                pack_strided(|kk| rhs.data[(kb + kk) * rhs.row + c * rhs.col], kc, out, NR, j);
            }
        }
    }

    /// `lines ≤ 16` lines contiguous along `k` (rows of the left operand, columns of a transposed
    /// right one), `line_stride` apart, into `out[p·stride + first + lane]` for lanes
    /// `< lanes` (zeros past `lines`). Per 32 values of `k`: each line's 32 values become 16
    /// words in one conversion (two neighbours per word, low first), then the 16 × 16 words are
    /// transposed in registers so that each pair's words are one store.
    ///
    /// # Safety
    /// `data + l·line_stride + kk` for `l < lines`, `kk < kc` must be readable floats.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack_lines(
        data: *const f32,
        line_stride: usize,
        lines: usize,
        kc: usize,
        out: &mut [u32],
        stride: usize,
        first: usize,
        lanes: usize,
    ) {
        assert!(lines <= lanes && lanes <= 16 && first + lanes <= stride && out.len() >= kc.div_ceil(2) * stride);
        let store = first_lanes(lanes);
        let mut p = 0;
        while 2 * p < kc {
            let take = (kc - 2 * p).min(32);
            let (low, high) = (first_lanes(take), first_lanes(take.saturating_sub(16)));
            let mut words = [_mm512_setzero_si512(); 16];
            for (l, w) in words.iter_mut().enumerate().take(lines) {
                // SAFETY: the `take` values from `2p` of line `l` are the caller's; masked-off
                // lanes are not read.
                unsafe {
                    let line = data.add(l * line_stride + 2 * p);
                    let (lo, hi) = (_mm512_maskz_loadu_ps(low, line), _mm512_maskz_loadu_ps(high, line.add(16)));
                    *w = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                }
            }
            let pairs = transpose16(words);
            for (q, pair) in pairs.iter().enumerate().take(take.div_ceil(2)) {
                // SAFETY: `p + q` < `kc/2` rounded up and `first + lanes ≤ stride` (asserted).
                unsafe {
                    _mm512_mask_storeu_epi32(out.as_mut_ptr().add((p + q) * stride + first).cast(), store, *pair)
                };
            }
            p += 16;
        }
    }

    /// `lines ≤ 16` neighbouring lines across `k` (rows of a right operand, columns of a
    /// transposed left one), `k_stride` apart, into `out[p·stride + first + lane]` for lanes
    /// `< lanes` (zeros past `lines`): two lines' 16 values converted at once and interleaved as
    /// each word's low and high halves.
    ///
    /// # Safety
    /// `data + kk·k_stride + l` for `kk < kc`, `l < lines` must be readable floats.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack_across(
        data: *const f32,
        k_stride: usize,
        lines: usize,
        kc: usize,
        out: &mut [u32],
        stride: usize,
        first: usize,
        lanes: usize,
    ) {
        assert!(lines <= lanes && lanes <= 16 && first + lanes <= stride && out.len() >= kc.div_ceil(2) * stride);
        let (load, store) = (first_lanes(lines), first_lanes(lanes));
        let bits = |x: __m512| {
            _mm512_cvtepu16_epi32(unsafe { std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(x)) })
        };
        for p in 0..kc.div_ceil(2) {
            // SAFETY: masked-off lanes are neither read nor written; the rest are the caller's
            // (reads) and within `out` (asserted).
            unsafe {
                let low = bits(_mm512_maskz_loadu_ps(load, data.add(2 * p * k_stride)));
                let word = if 2 * p + 1 < kc {
                    let high = bits(_mm512_maskz_loadu_ps(load, data.add((2 * p + 1) * k_stride)));
                    _mm512_or_si512(low, _mm512_slli_epi32::<16>(high))
                } else {
                    low
                };
                _mm512_mask_storeu_epi32(out.as_mut_ptr().add(p * stride + first).cast(), store, word);
            }
        }
    }

    /// Any layout, one value at a time: `value(kk)` for `kk < kc` into `out[p·stride + lane]`.
    #[inline(always)]
    fn pack_strided(value: impl Fn(usize) -> f32, kc: usize, out: &mut [u32], stride: usize, lane: usize) {
        for p in 0..kc.div_ceil(2) {
            let lo = round_bits(value(2 * p));
            let hi = if 2 * p + 1 < kc { round_bits(value(2 * p + 1)) } else { 0 };
            out[p * stride + lane] = lo | hi << 16;
        }
    }

    /// `c[0..rows][0..cols] = [c +] a · b` for one `MR × NR` block, its first `ROWS` rows (at least
    /// `rows`) multiplied: `a` is `pairs × MR` words, `b` is `pairs × NR` words; the sums stay in
    /// registers for the whole block of `k`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn micro<const ROWS: usize, const HALVES: usize>(
        pairs: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        c_row: usize,
        rows: usize,
        cols: usize,
        add: bool,
    ) {
        debug_assert!(rows <= ROWS && ROWS <= MR && cols <= 16 * HALVES && HALVES <= 2);
        let mut acc = [[_mm512_setzero_ps(); HALVES]; ROWS];
        // SAFETY (whole block): `a` and `b` hold `pairs` rows of `MR` and `NR` words (the
        // packers' layout); `c` covers `rows × cols` floats `c_row` apart (the caller's).
        unsafe {
            for p in 0..pairs {
                let mut bs = [std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); HALVES];
                for (half, bh) in bs.iter_mut().enumerate() {
                    *bh =
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add(p * NR + 16 * half).cast()));
                }
                let ap = a.add(p * MR);
                for (r, sums) in acc.iter_mut().enumerate() {
                    let ar: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(r) as i32));
                    for (sum, &bh) in sums.iter_mut().zip(&bs) {
                        *sum = _mm512_dpbf16_ps(*sum, ar, bh);
                    }
                }
            }
            let masks: [__mmask16; 2] = [
                if cols >= 16 { 0xFFFF } else { (1u16 << cols) - 1 },
                if cols >= 32 {
                    0xFFFF
                } else if cols > 16 {
                    (1u16 << (cols - 16)) - 1
                } else {
                    0
                },
            ];
            for (r, sums) in acc.iter().enumerate().take(rows) {
                let row = c.add(r * c_row);
                for half in 0..HALVES {
                    let (ptr, mask) = (row.add(16 * half), masks[half]);
                    if mask == 0 {
                        continue;
                    }
                    let v = if add { _mm512_add_ps(sums[half], _mm512_maskz_loadu_ps(mask, ptr)) } else { sums[half] };
                    _mm512_mask_storeu_ps(ptr, mask, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool's threads, and the work they share, compute in the pool's precision; the threads
    /// outside keep theirs (as predictions served during a bfloat16 run must). The process-wide
    /// switch is only ever turned off here: the crate's other tests compute beside this one
    /// under `cargo test`, in float32.
    #[test]
    fn a_pools_precision_stays_on_its_threads() {
        use rayon::prelude::*;
        set_enabled(false);
        let (bfloat16, on) = pool(true).unwrap();
        assert_eq!(on, supported());
        let inside = bfloat16.install(|| (0..64).into_par_iter().map(|_| enabled()).collect::<Vec<_>>());
        assert!(inside.iter().all(|&e| e == supported()), "{inside:?}");
        assert!(!enabled());
        assert!(!std::thread::spawn(enabled).join().unwrap());
        // And the other way round: a float32 pool started from a bfloat16 thread.
        if supported() {
            bfloat16.install(|| {
                let (float32, on) = pool(false).unwrap();
                assert!(!on);
                assert!(float32.install(|| (0..64).into_par_iter().all(|_| !enabled())));
                assert!(enabled(), "the bfloat16 pool's thread keeps its setting");
            });
        }
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 20001) as f32 / 10000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn rounds_to_nearest_even() {
        assert_eq!(round(1.0), 1.0);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa, 1.
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(round(-2.5e-3), -f32::from_bits(0x3B24 << 16));
        assert!(round(f32::NAN).is_nan());
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
    }

    /// Filters packed once and `col(x)` packed straight from the input give, bit for bit, the
    /// product of the filters and an im2col copy packed as any matrix: for planes narrower and
    /// wider than 16 columns (a group spanning up to five images), padding on every side, a
    /// dilated and a non-square kernel, `k` over one block, odd `k`, blocks of channels starting
    /// past the first, with and without accumulation; and transposed (a weight gradient's right
    /// operand), over one and several blocks of output columns.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn patches_and_packed_filters_multiply_as_im2col_and_packing_do_bit_for_bit() {
        if !supported() {
            eprintln!("skipped: this CPU has no AVX-512-BF16");
            return;
        }
        // (in channels, out channels, side, images, kernel, padding, dilation, channels multiplied,
        // stride)
        type Case = (usize, usize, usize, usize, [usize; 2], [usize; 2], usize, std::ops::Range<usize>, usize);
        let cases: [Case; 12] = [
            (5, 13, 7, 3, [3, 3], [1, 1], 1, 0..5, 1),
            (8, 30, 4, 5, [1, 1], [0, 0], 1, 0..8, 1),
            (6, 12, 2, 9, [3, 3], [1, 1], 1, 1..6, 1),
            (12, 25, 9, 2, [5, 5], [2, 2], 1, 0..12, 1),
            (4, 7, 6, 3, [3, 3], [2, 2], 2, 0..4, 1),
            (3, 40, 5, 4, [1, 3], [0, 1], 1, 2..3, 1),
            (64, 12, 3, 6, [3, 3], [1, 1], 1, 10..60, 1),
            (3, 20, 12, 3, [3, 3], [1, 1], 1, 0..3, 1),
            // Gathers: strided, and stride 1 narrower than the input (no padding).
            (6, 14, 9, 3, [3, 3], [1, 1], 1, 0..6, 2),
            (16, 24, 7, 5, [1, 1], [0, 0], 1, 4..16, 2),
            (3, 16, 23, 2, [7, 7], [3, 3], 1, 0..3, 2),
            (5, 9, 8, 4, [3, 3], [0, 0], 1, 0..5, 1),
        ];
        for (cin, cout, side, images, kernel, padding, dilation, channels, stride) in cases {
            let out = |axis: usize| (side + 2 * padding[axis] - dilation * (kernel[axis] - 1) - 1) / stride + 1;
            let g = ConvGeometry {
                batch: images,
                in_channels: cin,
                out_channels: cout,
                in_h: side,
                in_w: side,
                out_h: out(0),
                out_w: out(1),
                kernel,
                stride: [stride, stride],
                padding,
                dilation: [dilation, dilation],
            };
            let (taps, plane, image_len) = (g.taps(), g.out_plane(), cin * side * side);
            let x = values(images * image_len, 7);
            let weight = values(cout * cin * taps, 11);
            // `col(x)` of the channels, by the definition.
            let (k, n) = (channels.len() * taps, images * plane);
            let mut col = vec![0.0; k * n];
            for (i, c) in channels.clone().enumerate() {
                for t in 0..taps {
                    let (ky, kx) = (t / kernel[1], t % kernel[1]);
                    for b in 0..images {
                        for o in 0..plane {
                            let iy = (o / g.out_w * stride + ky * dilation) as isize - padding[0] as isize;
                            let ix = (o % g.out_w * stride + kx * dilation) as isize - padding[1] as isize;
                            if (0..side as isize).contains(&iy) && (0..side as isize).contains(&ix) {
                                col[(i * taps + t) * n + b * plane + o] =
                                    x[b * image_len + c * side * side + iy as usize * side + ix as usize];
                            }
                        }
                    }
                }
            }
            let lhs = View { data: &weight[channels.start * taps..], row: cin * taps, col: 1 };
            let filters = PackedLeft::new(cout, k, lhs);
            let layout = PatchLayout::new(&g, image_len, images);
            let patches = Patches::new(&layout, &x);
            for accumulate in [false, true] {
                let start = values(cout * n, 3);
                let (mut want, mut got) = (start.clone(), start.clone());
                let rhs = View { data: &col, row: n, col: 1 };
                unsafe {
                    x86::product(cout, n, k, want.as_mut_ptr(), n, accumulate, Left::View(lhs), Right::View(rhs));
                    let right = Right::Patches(&patches, channels.start);
                    multiply_with(cout, n, k, got.as_mut_ptr(), n, accumulate, Left::Packed(&filters), right);
                }
                let same = want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{cin}>{cout} {side}×{side} ×{images} {kernel:?} pad {padding:?} dil {dilation} {channels:?} acc {accumulate}"
                );
                // And transposed, a weight gradient's: `dy (cout × n) · col(x)ᵀ`.
                let dy = values(cout * n, 5);
                let start = values(cout * k, 9);
                let (mut want, mut got) = (start.clone(), start.clone());
                let (dy, col_t) = (View { data: &dy, row: n, col: 1 }, View { data: &col, row: 1, col: n });
                unsafe {
                    x86::product(cout, k, n, want.as_mut_ptr(), k, accumulate, Left::View(dy), Right::View(col_t));
                    let right = Right::Transposed(&patches, channels.start);
                    multiply_with(cout, k, n, got.as_mut_ptr(), k, accumulate, Left::View(dy), right);
                }
                let same = want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "transposed: {cin}>{cout} {side}×{side} ×{images} {kernel:?} {channels:?} acc {accumulate}"
                );
            }
        }
    }

    /// Every stride shape the convolutions use (row-major, transposed, and neither), edges of
    /// the panels (m, n not multiples of 12, 32; odd k; k over one block), with and without
    /// accumulation: the result equals the f64 sum of the bfloat16-rounded operands to float32
    /// rounding of the sums.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn multiplies_the_rounded_operands_exactly_up_to_float32_sums() {
        // Called directly, not through the process-wide switch: tests share the process.
        if !supported() {
            eprintln!("skipped: this CPU has no AVX-512-BF16");
            return;
        }
        for &(m, n, k) in &[(1, 1, 1), (12, 32, 2), (13, 33, 3), (25, 70, 257), (7, 5, 600), (40, 100, 64)] {
            for layout in 0..4 {
                let a = values(m * k, (m * 31 + k) as u32);
                let b = values(k * n, (n * 17 + k) as u32);
                // Left row-major or transposed; right row-major, transposed, or with both
                // strides > 1 (rows of a wider matrix, every other column).
                let (lhs, a_at): (View, Box<dyn Fn(usize, usize) -> f32>) = if layout % 2 == 0 {
                    (View { data: &a, row: k, col: 1 }, Box::new(|r, c| a[r * k + c]))
                } else {
                    (View { data: &a, row: 1, col: m }, Box::new(|r, c| a[r + c * m]))
                };
                let b2 = values(k * 2 * n, 99);
                let (rhs, b_at): (View, Box<dyn Fn(usize, usize) -> f32>) = match layout {
                    0 | 1 => (View { data: &b, row: n, col: 1 }, Box::new(|r, c| b[r * n + c])),
                    2 => (View { data: &b, row: 1, col: k }, Box::new(|r, c| b[r + c * k])),
                    _ => (View { data: &b2, row: 2 * n, col: 2 }, Box::new(|r, c| b2[r * 2 * n + 2 * c])),
                };
                for accumulate in [false, true] {
                    let start = values(m * (n + 3), 5);
                    let mut dst = start.clone();
                    unsafe {
                        x86::product(m, n, k, dst.as_mut_ptr(), n + 3, accumulate, Left::View(lhs), Right::View(rhs))
                    };
                    for r in 0..m {
                        for c in 0..n + 3 {
                            let got = dst[r * (n + 3) + c];
                            if c >= n {
                                assert_eq!(got, start[r * (n + 3) + c], "wrote past the columns");
                                continue;
                            }
                            let mut want: f64 = if accumulate { start[r * (n + 3) + c] as f64 } else { 0.0 };
                            let mut magnitude = want.abs();
                            for i in 0..k {
                                let p = round(a_at(r, i)) as f64 * round(b_at(i, c)) as f64;
                                want += p;
                                magnitude += p.abs();
                            }
                            let tolerance = 1e-6 * magnitude + 1e-7;
                            assert!(
                                (got as f64 - want).abs() <= tolerance,
                                "m {m} n {n} k {k} layout {layout} acc {accumulate} ({r}, {c}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
