//! The media client: the one way user media (voice notes, photos) is downloaded.
//!
//! Two hops, both with the bearer token: `GET /{version}/{media-id}` for a short-lived URL and
//! metadata, then `GET url` for the bytes. The declared size is checked against per-kind limits
//! before downloading, the download itself is capped, the MIME type must match the kind, and the
//! bytes must match the sha256 Meta declared (base64 in webhooks, hex in some responses). An
//! expired URL is refreshed once; an expired or unknown media id (400, code 100) is final. The
//! bearer token goes to the hop-2 URL only over https or to the Graph API's own origin.
//!
//! The bytes live in memory only: nothing here (or downstream) writes them to disk.

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::graph::{GraphClient, GraphError};
use crate::whatsapp::{MediaKind, MediaRef};

/// Largest media accepted per kind (Meta's own limits).
pub fn max_bytes(kind: MediaKind) -> u64 {
    match kind {
        MediaKind::Audio | MediaKind::Video => 16 * 1024 * 1024,
        MediaKind::Image => 5 * 1024 * 1024,
        MediaKind::Document => 100 * 1024 * 1024,
        MediaKind::Sticker => 512 * 1024,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The media id expired (Meta keeps webhook media for 7 days) or never existed.
    #[error("the media is no longer available")]
    Gone,
    #[error("the media is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("the media type {0} does not match the message")]
    WrongType(String),
    #[error("the media's checksum does not match what Meta declared")]
    Checksum,
    /// Hop 1 named a download URL the access token must not be sent to (see
    /// [`GraphClient::media_url_trusted`]); only its origin is kept, never the signed URL.
    #[error("refusing to download media from untrusted origin {origin}")]
    UntrustedUrl { origin: String },
    #[error("downloading the media failed: {0}")]
    Graph(GraphError),
}

/// Downloaded media: the bytes and their MIME type.
pub struct Media {
    pub bytes: Vec<u8>,
    pub mime: String,
}

#[derive(Clone, Debug)]
pub struct MediaClient {
    graph: GraphClient,
}

fn declared_sha256(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        return hex::decode(s).ok();
    }
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .ok()
        .filter(|b| b.len() == 32)
}

impl MediaClient {
    pub fn new(graph: GraphClient) -> Self {
        Self { graph }
    }

    pub async fn fetch(&self, media: &MediaRef) -> Result<Media, MediaError> {
        let limit = max_bytes(media.kind);
        if crate::playground::is_local_id(&media.id) {
            // Playground media: in memory already, the same size limit as Meta's.
            let (bytes, mime) = self
                .graph
                .local()
                .media(&media.id)
                .ok_or(MediaError::Gone)?;
            if bytes.len() as u64 > limit {
                return Err(MediaError::TooLarge {
                    size: bytes.len() as u64,
                    limit,
                });
            }
            return Ok(Media {
                bytes: bytes.to_vec(),
                mime,
            });
        }
        let mut last = None;
        for attempt in 0..2 {
            let info = match self.graph.media_info(&media.id).await {
                Ok(i) => i,
                Err(e) if e.code == Some(100) || e.http_status == Some(404) => {
                    return Err(MediaError::Gone);
                }
                Err(e) => return Err(MediaError::Graph(e)),
            };
            if let Some(size) = info.file_size
                && size > limit
            {
                return Err(MediaError::TooLarge { size, limit });
            }
            let mime = info
                .mime_type
                .clone()
                .or_else(|| media.mime_type.clone())
                .unwrap_or_default();
            let family = match media.kind {
                MediaKind::Audio => "audio/",
                MediaKind::Image | MediaKind::Sticker => "image/",
                MediaKind::Video => "video/",
                MediaKind::Document => "",
            };
            if !mime.starts_with(family) {
                return Err(MediaError::WrongType(mime));
            }
            if !self.graph.media_url_trusted(&info.url) {
                let origin = reqwest::Url::parse(&info.url)
                    .map(|u| u.origin().ascii_serialization())
                    .unwrap_or_else(|_| "(malformed URL)".into());
                tracing::warn!(media = %media.id, %origin, "media URL refused: the access token goes only to https or the Graph API's own origin");
                return Err(MediaError::UntrustedUrl { origin });
            }
            match self.graph.media_bytes(&info.url, limit).await {
                Ok(bytes) => {
                    let declared = media
                        .sha256
                        .as_deref()
                        .or(info.sha256.as_deref())
                        .and_then(declared_sha256);
                    if let Some(want) = declared
                        && Sha256::digest(&bytes).as_slice() != want.as_slice()
                    {
                        return Err(MediaError::Checksum);
                    }
                    return Ok(Media { bytes, mime });
                }
                Err(e) if e.is_over_limit() => {
                    return Err(MediaError::TooLarge {
                        size: limit + 1,
                        limit,
                    });
                }
                // The 5-minute URL may have expired between the hops: ask for a fresh one, once.
                Err(e) => {
                    tracing::info!(attempt, error = %e, "media download failed; refreshing the URL once");
                    last = Some(e);
                }
            }
        }
        Err(MediaError::Graph(last.expect("two attempts failed")))
    }
}
