//! Checks on file formats that need no decoder (and no I/O), shared by the upload path and the
//! training data pipeline.

/// Walks the JPEG marker structure and reports whether it reaches the end-of-image marker.
///
/// A naive "ends with FFD9" check would reject files with harmless trailing bytes, and a naive
/// "contains FFD9" check would be fooled by the embedded EXIF thumbnail's own end marker; skipping
/// segments by their declared lengths avoids both.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const SOI: u8 = 0xD8;
    const EOI: u8 = 0xD9;
    const SOS: u8 = 0xDA;
    let standalone = |m: u8| m == 0x01 || (0xD0..=0xD7).contains(&m);

    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != SOI {
        return false;
    }
    let mut i = 2;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while i < bytes.len() && bytes[i] == 0xFF {
            i += 1;
        }
        if i == 0 || i >= bytes.len() || bytes[i - 1] != 0xFF {
            return false;
        }
        let marker = bytes[i];
        i += 1;
        if marker == EOI {
            return true;
        }
        if standalone(marker) {
            continue;
        }
        let Some(len) = bytes.get(i..i + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) else {
            return false;
        };
        if len < 2 {
            return false;
        }
        i += len;
        if marker == SOS {
            // Entropy-coded data: 0xFF is followed by 0x00 (a stuffed byte) or a restart marker;
            // anything else is the next real marker.
            loop {
                match bytes.get(i..i + 2) {
                    None => return false,
                    Some([0xFF, next]) if *next == 0x00 || (0xD0..=0xD7).contains(next) => i += 2,
                    Some([0xFF, 0xFF]) => i += 1,
                    Some([0xFF, _]) => break,
                    Some(_) => i += 1,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_marker_past_segments_and_entropy_data() {
        // SOI, an APP0 segment of length 4, SOS with length 2, entropy data with a stuffed FF00, EOI.
        let whole = [
            0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0xAA, 0xBB, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD9,
        ];
        assert!(jpeg_is_complete(&whole));
        for cut in 0..whole.len() {
            assert!(!jpeg_is_complete(&whole[..cut]), "cut at {cut}");
        }
        let mut trailing = whole.to_vec();
        trailing.extend_from_slice(b"junk");
        assert!(jpeg_is_complete(&trailing));
    }
}
