//! Media handling for deeptune: everything that touches user-supplied bytes or URLs before they
//! are stored.
//!
//! - [`image_check`]: recognise images by content, refuse decompression bombs and corrupt files,
//!   make thumbnails.
//! - [`fetch`]: download image URLs through an SSRF guard (no loopback, private, link-local or
//!   other internal addresses unless allowlisted; checked on every redirect hop and DNS answer).
//! - [`import`]: parse Clarifai-format CSV/TSV bulk-import files into rows, with per-row errors.

pub mod fetch;
pub mod image_check;
pub mod import;

pub use fetch::{FetchConfig, FetchError, UrlFetcher};
pub use image_check::{
    ImageFormat, ImageInfo, ImageLimits, MediaError, ProcessedImage, check_image, process_image, sniff_format,
};
pub use import::{Delimiter, ImportConcept, ImportError, ImportRow, RowError, detect_delimiter, parse_import};
