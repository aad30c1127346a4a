//! Files from the Hugging Face Hub over plain HTTPS ([`CatalogSource::HubDirect`]): the
//! `resolve` URL of each file, checked against the sha256 the Hub publishes for it.
//!
//! Why not `hf-hub`: it is an optional feature (its own HTTP stack) and it checks nothing; a
//! voice is two files, which one blocking reqwest client fetches with the TLS stack Sandra
//! already links. The Hub answers `GET /{repo}/resolve/{revision}/{file}` for a file kept in
//! LFS with a redirect to its CDN whose headers carry `X-Linked-Etag` (the file's sha256) and
//! `X-Repo-Commit` (what the revision pointed at); small files kept in git are served directly
//! with a git blob id as their ETag, which is no sha256: those are checked by TLS alone, and
//! said so in the log. Nothing is installed until every file of the model has arrived whole:
//! files are written as `.partial` and renamed at the end, the `.onnx.json` before the
//! `.onnx`, so the speaker never finds half a voice.
//!
//! [`CatalogSource::HubDirect`]: crate::catalog::CatalogSource::HubDirect

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use reqwest::header::{AUTHORIZATION, HeaderMap, LOCATION};
use sha2::{Digest, Sha256};

use crate::catalog::{InstallError, InstalledFile, io_err};
use crate::chat::error_chain;

/// What one file's download brought.
pub(super) struct Fetched {
    pub file: InstalledFile,
    /// The commit the revision resolved to, when the Hub said.
    pub commit: Option<String>,
}

/// The Hub's address: `HF_ENDPOINT` (a mirror, or a test's fake Hub), else huggingface.co.
pub fn default_endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

/// Downloads `files` of `repo` at `revision` into `dir` (inside `models_dir`), each under its
/// base name, verified, then all renamed into place at once. Returns them in `files`' order.
pub(super) fn fetch_files(
    opts: &super::FetchOptions,
    repo: &str,
    revision: &str,
    files: &[&str],
    models_dir: &Path,
    dir: &str,
) -> Result<Vec<Fetched>, InstallError> {
    let endpoint = &opts.hub_endpoint;
    let out_dir = models_dir.join(dir);
    fs::create_dir_all(&out_dir).map_err(io_err(&out_dir))?;
    let hub = HubClient::new(opts.hub_token.clone())?;
    let mut got = Vec::new();
    let mut partials = Vec::new();
    let result = (|| {
        for file in files {
            let name = file.rsplit('/').next().unwrap_or(file);
            let partial = out_dir.join(format!("{name}.partial"));
            partials.push(partial.clone());
            let url = format!("{endpoint}/{repo}/resolve/{revision}/{file}");
            if opts.progress {
                eprintln!("downloading {url}");
            }
            let (sha256, size, commit) = hub.download(&url, &partial)?;
            got.push(Fetched {
                file: InstalledFile {
                    path: format!("{dir}/{name}"),
                    sha256,
                    size,
                },
                commit,
            });
        }
        Ok::<_, InstallError>(())
    })();
    if let Err(e) = result {
        for p in &partials {
            let _ = fs::remove_file(p);
        }
        return Err(e);
    }
    // Side files first, the main file last: a loader that looks for `*.onnx` sees it only when
    // its `.onnx.json` is already there.
    let mut order: Vec<usize> = (0..got.len()).collect();
    order.sort_by_key(|&i| i == 0);
    for i in order {
        let to = models_dir.join(&got[i].file.path);
        fs::rename(&partials[i], &to).map_err(io_err(&to))?;
    }
    Ok(got)
}

struct HubClient {
    /// Follows no redirect, so that the Hub's own headers (hash, commit) are seen.
    hub: Client,
    /// Follows redirects (the CDN may redirect again); never sent the Hub token.
    cdn: Client,
    token: Option<String>,
}

impl HubClient {
    fn new(token: Option<String>) -> Result<Self, InstallError> {
        let build = |redirects| {
            Client::builder()
                .redirect(redirects)
                .connect_timeout(Duration::from_secs(30))
                // The whole download, body included: a voice is ~63 MB, which a slow link
                // (1 Mbit/s) brings in about 9 minutes.
                .timeout(Duration::from_secs(30 * 60))
                .user_agent(concat!("sandra/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| InstallError::Hub(e.to_string()))
        };
        Ok(Self {
            hub: build(reqwest::redirect::Policy::none())?,
            cdn: build(reqwest::redirect::Policy::limited(5))?,
            token,
        })
    }

    /// Streams `url` into `to`, hashing as it goes; checks it against the sha256 and size the
    /// Hub published. Returns (sha256, size, commit).
    fn download(
        &self,
        url: &str,
        to: &Path,
    ) -> Result<(String, u64, Option<String>), InstallError> {
        // reqwest's own message ("error sending request") hides the cause (DNS, refused, TLS).
        let hub_err = |e: reqwest::Error| InstallError::Hub(format!("{url}: {}", error_chain(&e)));
        let mut req = self.hub.get(url);
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let first = req.send().map_err(hub_err)?;
        let published = Published::from_headers(first.headers());
        let resp = if first.status().is_redirection() {
            let location = first
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| InstallError::Hub(format!("{url}: redirect without a location")))?;
            let next = first
                .url()
                .join(location)
                .map_err(|e| InstallError::Hub(format!("{url}: bad redirect {location:?}: {e}")))?;
            // A relative redirect stays on the Hub (a renamed repository): the token goes along.
            let mut req = self.cdn.get(next.clone());
            if next.origin() == first.url().origin()
                && let Some(t) = &self.token
            {
                req = req.header(AUTHORIZATION, format!("Bearer {t}"));
            }
            req.send().map_err(hub_err)?
        } else {
            first
        };
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().unwrap_or_default();
            let why = match status.as_u16() {
                401 | 403 => " (a gated or private repository: set HF_TOKEN)",
                404 => " (no such file at that revision)",
                _ => "",
            };
            return Err(InstallError::Hub(format!(
                "{url}: HTTP {status}{why}: {}",
                body.chars().take(200).collect::<String>()
            )));
        }
        let (sha, size) = stream_to(resp, to)?;
        if let Some(want) = published.size.filter(|&w| w != size) {
            let _ = fs::remove_file(to);
            return Err(InstallError::SizeMismatch {
                what: url.to_string(),
                expected: want,
                actual: size,
            });
        }
        match published.sha256 {
            Some(want) if want != sha => {
                let _ = fs::remove_file(to);
                return Err(InstallError::HashMismatch {
                    what: url.to_string(),
                    expected: want,
                    actual: sha,
                });
            }
            Some(_) => tracing::info!(%url, size, "downloaded; sha256 matches the Hub's"),
            None => tracing::info!(
                %url,
                size,
                "downloaded; the Hub publishes no sha256 for files kept in git: checked by TLS only"
            ),
        }
        Ok((sha, size, published.commit))
    }
}

/// What the Hub says of a file before sending it.
#[derive(Debug, Default, PartialEq)]
struct Published {
    sha256: Option<String>,
    size: Option<u64>,
    commit: Option<String>,
}

impl Published {
    fn from_headers(h: &HeaderMap) -> Self {
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        let sha256 = get("x-linked-etag")
            .or_else(|| get("etag"))
            .map(|e| {
                e.trim_start_matches("W/")
                    .trim_matches('"')
                    .to_ascii_lowercase()
            })
            .filter(|e| e.len() == 64 && e.bytes().all(|b| b.is_ascii_hexdigit()));
        Self {
            sha256,
            size: get("x-linked-size").and_then(|s| s.parse().ok()),
            commit: get("x-repo-commit").map(str::to_string),
        }
    }
}

fn stream_to(mut resp: Response, to: &Path) -> Result<(String, u64), InstallError> {
    let file = File::create(to).map_err(io_err(to))?;
    let mut out = BufWriter::new(file);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    let read_err = |e: io::Error| InstallError::Hub(format!("{}: download cut: {e}", to.display()));
    loop {
        let n = resp.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err(to))?;
        size += n as u64;
    }
    out.flush().map_err(io_err(to))?;
    out.get_ref().sync_all().map_err(io_err(to))?;
    Ok((hex::encode(hasher.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn the_hubs_linked_etag_is_the_sha256_and_a_git_etag_is_not() {
        let mut h = HeaderMap::new();
        let sha = "58AFCE0321B8D9C46D7CDF9C16500CC55A793B4220212DBA6B70FB788B3BAF06";
        h.insert(
            "x-linked-etag",
            HeaderValue::from_str(&format!("\"{sha}\"")).unwrap(),
        );
        h.insert("etag", HeaderValue::from_static("W/\"abc\""));
        h.insert("x-linked-size", HeaderValue::from_static("63201294"));
        h.insert("x-repo-commit", HeaderValue::from_static("deadbeef"));
        let p = Published::from_headers(&h);
        assert_eq!(p.sha256.as_deref(), Some(sha.to_ascii_lowercase().as_str()));
        assert_eq!(p.size, Some(63_201_294));
        assert_eq!(p.commit.as_deref(), Some("deadbeef"));

        let mut git = HeaderMap::new();
        git.insert(
            "etag",
            HeaderValue::from_static("\"3c9ad8d1b8b2fbcd8e0c8ac0a1a2b2e2f0a7d3e4\""),
        );
        assert_eq!(Published::from_headers(&git), Published::default());
    }
}
