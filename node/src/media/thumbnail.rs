//! Previews of images sent as attachments: a small JPEG carried in the manifest (at most
//! [`MAX_THUMBNAIL_BYTES`]), made by the sender from its own file; and an image's dimensions,
//! read from its header only.

use std::io::Cursor;
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::{ImageReader, Limits};
use kith_protocol::limits::MAX_THUMBNAIL_BYTES;

/// Sizes (longest side, pixels) and JPEG qualities tried, largest first, until the preview
/// fits [`MAX_THUMBNAIL_BYTES`].
const ATTEMPTS: [(u32, u8); 3] = [(320, 75), (200, 60), (120, 50)];

/// Most memory decoding the sender's image may take (a 40-megapixel photo fits).
pub const DECODE_LIMIT: u64 = 256 * 1024 * 1024;

/// Whether files of MIME type `mime` get a preview.
pub fn previewable(mime: &str) -> bool {
    matches!(mime, "image/jpeg" | "image/png")
}

/// A JPEG preview of the image at `path`, at most [`MAX_THUMBNAIL_BYTES`]; `None` for what is
/// not a JPEG or PNG image, or cannot be decoded within [`DECODE_LIMIT`].
pub fn make(path: &Path, mime: &str) -> Option<Vec<u8>> {
    if !previewable(mime) {
        return None;
    }
    let mut reader = ImageReader::open(path).ok()?.with_guessed_format().ok()?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(DECODE_LIMIT);
    reader.limits(limits);
    let image = reader.decode().ok()?;
    ATTEMPTS.iter().find_map(|(side, quality)| {
        let small = image.thumbnail(*side, *side).to_rgb8();
        let mut out = Cursor::new(Vec::new());
        JpegEncoder::new_with_quality(&mut out, *quality).encode_image(&small).ok()?;
        let bytes = out.into_inner();
        (bytes.len() <= MAX_THUMBNAIL_BYTES).then_some(bytes)
    })
}

/// The width and height of the JPEG or PNG image at `path`, from its header (nothing else of
/// the file is read or decoded).
pub fn dimensions(path: &Path) -> Option<(u32, u32)> {
    ImageReader::open(path).ok()?.with_guessed_format().ok()?.into_dimensions().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_photo_gets_a_small_preview_and_its_dimensions_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.png");
        // Noise compresses badly: the hardest case for the size cap.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let photo = image::RgbImage::from_fn(1920, 1080, |_, _| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let [r, g, b, ..] = state.to_le_bytes();
            image::Rgb([r, g, b])
        });
        photo.save(&path).unwrap();
        assert_eq!(dimensions(&path), Some((1920, 1080)));
        let preview = make(&path, "image/png").unwrap();
        assert!(preview.len() <= MAX_THUMBNAIL_BYTES, "{} bytes", preview.len());
        let shown = image::load_from_memory(&preview).unwrap();
        assert!(
            shown.width() <= 320 && shown.height() <= 180,
            "{}×{}",
            shown.width(),
            shown.height()
        );
        // Not an image, or not one we preview: nothing.
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello").unwrap();
        assert_eq!(make(&text, "text/plain"), None);
        assert_eq!(make(&text, "image/png"), None, "a PNG in name only");
        assert_eq!(dimensions(&text), None);
    }
}
