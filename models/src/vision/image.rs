//! Decoding the photos users send, in memory, with limits.
//!
//! The format comes from the bytes' magic number (WhatsApp's mime type is only a hint: stickers
//! arrive as `image/webp`, but forwarded files are sometimes labelled wrongly). The pixel cap is
//! checked from the header, before any pixel buffer is allocated, so a few kilobytes claiming
//! 30000×30000 pixels (a decompression bomb) cost nothing; the `image` crate's own allocation
//! limit (`max_alloc`) is set too, as a second fence for what its decoders allocate inside.

use std::io::Cursor;

use ::image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

/// Limits on one decoded image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest width × height decoded; checked from the header, before allocation.
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_pixels: 40_000_000,
        }
    }
}

impl ImageLimits {
    /// Whether a `width`×`height` image is within the pixel cap (an empty image never is: it
    /// has nothing to show and would only confuse the models downstream).
    pub fn check(&self, width: u32, height: u32) -> Result<(), ImageError> {
        let pixels = u64::from(width) * u64::from(height);
        if pixels == 0 {
            return Err(ImageError::Corrupt(format!("empty image {width}×{height}")));
        }
        if pixels > self.max_pixels {
            return Err(ImageError::TooLarge {
                width,
                height,
                max_pixels: self.max_pixels,
            });
        }
        Ok(())
    }

    /// The `image` crate's allocation cap for these limits: the largest output buffer the
    /// decoders may need (16-bit RGBA, 8 bytes a pixel, the widest PNG) plus room for their
    /// working buffers. Anything a decoder allocates beyond that is refused.
    fn max_alloc(&self) -> u64 {
        const WORKING_SET: u64 = 16 * 1024 * 1024;
        self.max_pixels
            .saturating_mul(8)
            .saturating_add(WORKING_SET)
    }
}

/// Why an image could not be decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ImageError {
    #[error("unsupported image type {mime}")]
    Unsupported { mime: String },
    #[error("image too large: {width}×{height} pixels (limit {max_pixels})")]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error("corrupt image: {0}")]
    Corrupt(String),
}

/// Decodes `bytes` (JPEG, PNG or WebP; an animated WebP gives its first frame) to RGB, upright
/// (EXIF orientation applied). `mime` is what WhatsApp said; the bytes' magic number wins.
pub fn decode(
    bytes: &[u8],
    mime: &str,
    limits: &ImageLimits,
) -> Result<::image::RgbImage, ImageError> {
    let format = sniff(bytes).ok_or_else(|| ImageError::Unsupported { mime: mime.into() })?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // zune-jpeg, behind `image`, decodes leniently: a cut-off file comes out with its
        // missing rows painted grey instead of an error. A half photo must not reach OCR as if
        // it were the whole one, so the missing end marker is the error.
        return Err(ImageError::Corrupt(
            "truncated JPEG (no end-of-image marker)".into(),
        ));
    }

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = Limits::default();
    image_limits.max_alloc = Some(limits.max_alloc());
    reader.limits(image_limits);
    // Building the decoder reads the header only (dimensions, colour type, metadata chunks);
    // no pixel buffer exists yet.
    let mut decoder = reader.into_decoder().map_err(|e| header_error(e, limits))?;
    let (width, height) = decoder.dimensions();
    limits.check(width, height)?;
    let orientation = decoder.orientation().map_err(|e| corrupt(&e))?;

    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| match e {
        ::image::ImageError::Limits(_) => ImageError::TooLarge {
            width,
            height,
            max_pixels: limits.max_pixels,
        },
        e => corrupt(&e),
    })?;
    image.apply_orientation(orientation);
    Ok(flatten_on_white(image))
}

/// The format from the magic number, among those Sandra reads.
fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    match ::image::guess_format(bytes).ok()? {
        f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP) => Some(f),
        _ => None,
    }
}

/// Whether a JPEG's last scan is followed by the end-of-image marker (FF D9). Inside scan data
/// every 0xFF byte is stuffed (FF 00) or a restart marker (FF D0–D7), so FF D9 after the last
/// start-of-scan (FF DA) can only be the real end; an EXIF thumbnail's markers all come before
/// the main image's scans. Trailing bytes after the marker (some cameras append data) are fine.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let Some(last_sos) = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[last_sos..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Errors while reading the header: a limit hit this early means the declared size is over it
/// (the dimensions are not known to us yet, hence 0×0 in the error).
fn header_error(e: ::image::ImageError, limits: &ImageLimits) -> ImageError {
    match e {
        ::image::ImageError::Limits(_) => ImageError::TooLarge {
            width: 0,
            height: 0,
            max_pixels: limits.max_pixels,
        },
        e => corrupt(&e),
    }
}

fn corrupt(e: &::image::ImageError) -> ImageError {
    ImageError::Corrupt(e.to_string())
}

/// RGB8, with any transparency composited over white: stickers and screenshots with alpha have
/// transparent (often black, zero-alpha) backgrounds that would otherwise turn dark text
/// invisible to OCR.
fn flatten_on_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let (width, height) = rgba.dimensions();
    let mut out = RgbImage::new(width, height);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let [r, g, b, a] = src.0;
        dst.0 = [over_white(r, a), over_white(g, a), over_white(b, a)];
    }
    out
}

/// One channel of `c` at opacity `a` over white, rounded.
fn over_white(c: u8, a: u8) -> u8 {
    let (c, a) = (u32::from(c), u32::from(a));
    ((c * a + 255 * (255 - a) + 127) / 255) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_white_keeps_opaque_and_whitens_transparent() {
        assert_eq!(over_white(10, 255), 10);
        assert_eq!(over_white(0, 0), 255);
        assert_eq!(over_white(0, 128), 127);
        assert_eq!(over_white(255, 77), 255);
    }

    #[test]
    fn limits_check_counts_pixels_not_sides() {
        let limits = ImageLimits { max_pixels: 100 };
        assert!(limits.check(10, 10).is_ok());
        assert!(limits.check(100, 1).is_ok());
        assert!(matches!(
            limits.check(11, 10),
            Err(ImageError::TooLarge {
                width: 11,
                height: 10,
                max_pixels: 100
            })
        ));
        assert!(matches!(limits.check(0, 10), Err(ImageError::Corrupt(_))));
        // Sides whose product overflows u32 are still compared correctly.
        assert!(ImageLimits::default().check(u32::MAX, u32::MAX).is_err());
    }

    #[test]
    fn jpeg_end_marker_is_looked_for_after_the_last_scan() {
        // SOI, (thumbnail-like) SOS … EOI, main SOS, data: the thumbnail's EOI does not count.
        let cut = [0xFF, 0xD8, 0xFF, 0xDA, 1, 0xFF, 0xD9, 0xFF, 0xDA, 2, 3];
        assert!(!jpeg_is_complete(&cut));
        let whole = [0xFF, 0xD8, 0xFF, 0xDA, 1, 0xFF, 0x00, 2, 0xFF, 0xD9, 0, 0];
        assert!(jpeg_is_complete(&whole));
        assert!(!jpeg_is_complete(&[0xFF, 0xD8]));
    }

    #[test]
    fn unknown_bytes_are_unsupported_with_the_senders_mime() {
        let err = decode(b"GIF89a....", "image/gif", &ImageLimits::default()).unwrap_err();
        assert_eq!(
            err,
            ImageError::Unsupported {
                mime: "image/gif".into()
            }
        );
    }
}
