//! The vault: secrets stored by `sandra secrets set` (and the Admin Portal), encrypted at rest,
//! and the master key everything encrypted hangs off.
//!
//! **Where the records live.** One small file, `<data_dir>/secrets.json`, not a sled tree:
//! sled holds an exclusive lock on the database while `sandra serve` runs, and `sandra secrets
//! set` must work while it runs (the operator stores a token, then sends SIGHUP); the secrets
//! are also needed before the database is opened, to build the configuration. The file is
//! replaced atomically (written beside, fsynced, renamed, directory fsynced) under an advisory
//! lock (`secrets.lock`), so concurrent writers (the CLI and the portal) never lose each other's
//! changes and a crash leaves the old file or the new one.
//!
//! **A record** is a sealed [`sandra_actors::at_rest`] record in base64: XChaCha20-Poly1305
//! under a key derived from the master key for secrets only, a random 24-byte nonce from the
//! OS, the record's name as associated data (a record copied under another name does not
//! open), and the id of the key that sealed it. The file also holds a key check record (a known
//! value sealed with the key), so a wrong master key stops start-up with a clear message before
//! anything else is read.
//!
//! **The master key** is 32 bytes, written as 64 hex digits (base64 is accepted too), taken
//! from the first of: `SANDRA_MASTER_KEY`; the systemd credential `master_key`
//! (`$CREDENTIALS_DIRECTORY/master_key`, `LoadCredential=`); the key file
//! (`storage.master_key_file`, default `<data_dir>/master.key`), created 0600 in a 0700
//! directory on first start when none exists. It is never logged (only its id, a one-way
//! fingerprint).
//!
//! **Rotation** ([`rotate_key`]) writes the new key to `<data_dir>/master.key.new` before it
//! touches anything, reseals the database then the secrets file under it, and only then
//! installs it as the key file. Every record names the key that sealed it, so until the end
//! both keys exist and every record opens with one of them; an interrupted rotation is finished
//! by running it again (it picks up `master.key.new`), and start-up refuses to run while that
//! file exists.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use sandra_actors::at_rest::{Keyring, MasterKey, Sealer};
use sandra_actors::secret::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::{Config, STORABLE_KEYS};

/// The environment variable that holds the master key.
pub const MASTER_KEY_ENV: &str = "SANDRA_MASTER_KEY";
/// The systemd credential name (`LoadCredential=master_key:...`).
pub const CREDENTIAL_NAME: &str = "master_key";
const FILE_NAME: &str = "secrets.json";
const LOCK_NAME: &str = "secrets.lock";
const PENDING_KEY: &str = "master.key.new";
const CHECK_AD: &[u8] = b"sandra:key-check";
const CHECK_VALUE: &[u8] = b"sandra master key check v1";
const SECRETS_PURPOSE: &[u8] = b"secrets";
const STORE_PURPOSE: &[u8] = b"store";

/// Where the master key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env,
    Credential(PathBuf),
    File(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Env => write!(f, "the environment variable {MASTER_KEY_ENV}"),
            KeySource::Credential(p) => write!(f, "the systemd credential {}", p.display()),
            KeySource::File(p) => write!(f, "the key file {}", p.display()),
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct VaultFile {
    format: u32,
    /// [`CHECK_VALUE`] sealed with the current key.
    check: String,
    secrets: BTreeMap<String, String>,
}

struct Inner {
    file: PathBuf,
    lock: PathBuf,
    master: MasterKey,
    sealer: Sealer,
    source: KeySource,
}

/// The encrypted secret store. Cheap to clone; every clone shares one key.
#[derive(Clone)]
pub struct Vault(Arc<Inner>);

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("file", &self.0.file)
            .field("key_id", &self.0.master.id())
            .field("key_source", &self.0.source)
            .finish()
    }
}

/// Whether `name` may be stored (the config keys of [`STORABLE_KEYS`]).
pub fn is_storable(name: &str) -> bool {
    STORABLE_KEYS.iter().any(|(k, _)| *k == name)
}

/// An error listing the storable names unless `name` is one.
pub fn check_storable(name: &str) -> anyhow::Result<()> {
    if is_storable(name) {
        return Ok(());
    }
    let known: Vec<&str> = STORABLE_KEYS.iter().map(|(k, _)| *k).collect();
    bail!(
        "`{name}` is not a setting that can be stored; one of: {}",
        known.join(", ")
    )
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(s: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| anyhow!("{what} is not valid base64: the secrets file was altered"))
}

/// Finds the master key: the environment, then the systemd credential, then the key file.
/// `None` when there is none yet (the key file does not exist).
pub fn find_master_key(
    cfg: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<(MasterKey, KeySource)>> {
    if let Some(v) = env(MASTER_KEY_ENV).filter(|v| !v.trim().is_empty()) {
        let k = MasterKey::parse(&v).map_err(|e| anyhow!("{MASTER_KEY_ENV}: {e}"))?;
        return Ok(Some((k, KeySource::Env)));
    }
    if let Some(dir) = env("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
        let p = Path::new(&dir).join(CREDENTIAL_NAME);
        if p.exists() {
            let text =
                zeroize::Zeroizing::new(std::fs::read_to_string(&p).with_context(|| {
                    format!("reading the master key credential {}", p.display())
                })?);
            let k = MasterKey::parse(&text).map_err(|e| anyhow!("{}: {e}", p.display()))?;
            return Ok(Some((k, KeySource::Credential(p))));
        }
    }
    let p = cfg.storage.master_key_path();
    match std::fs::read_to_string(&p) {
        Ok(text) => {
            let text = zeroize::Zeroizing::new(text);
            let k = MasterKey::parse(&text).map_err(|e| anyhow!("{}: {e}", p.display()))?;
            Ok(Some((k, KeySource::File(p))))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading the master key file {}", p.display())),
    }
}

/// Writes `text` to `path` created 0600 (its directory 0700 if created here), fsynced; replaces
/// an existing file atomically.
fn write_private(path: &Path, text: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} private (0700)", dir.display()))?;
        }
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(text)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The secrets file of `cfg`'s data directory.
pub fn secrets_file(cfg: &Config) -> PathBuf {
    cfg.storage.data_dir.join(FILE_NAME)
}

fn pending_key_path(cfg: &Config) -> PathBuf {
    cfg.storage.data_dir.join(PENDING_KEY)
}

impl Vault {
    /// Resolves the master key (creating the key file on first start), checks it against the
    /// secrets file (creating that too), and opens the vault. Reads the process environment.
    pub fn open(cfg: &Config) -> anyhow::Result<Vault> {
        Self::open_with_env(cfg, &|k| std::env::var(k).ok())
    }

    /// [`Vault::open`] with an explicit environment (tests).
    pub fn open_with_env(
        cfg: &Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Vault> {
        let pending = pending_key_path(cfg);
        if pending.exists() {
            bail!(
                "{} exists: a master key rotation was interrupted, or it finished with a key from the environment or a credential. Run `sandra secrets rotate-key` (again) to finish it; if it printed that it finished, first put the key in that file into {MASTER_KEY_ENV} or the credential `{CREDENTIAL_NAME}`",
                pending.display()
            );
        }
        let file = cfg.storage.data_dir.join(FILE_NAME);
        let (master, source) = match find_master_key(cfg, env)? {
            Some(found) => found,
            None => {
                let p = cfg.storage.master_key_path();
                if file.exists() {
                    bail!(
                        "no master key: {MASTER_KEY_ENV} is not set, there is no systemd credential `{CREDENTIAL_NAME}` and {} does not exist, but {} holds secrets sealed with a key. Restore the key (from your backup) rather than starting afresh",
                        p.display(),
                        file.display()
                    );
                }
                let k = MasterKey::generate();
                let mut text = k.to_hex();
                text.push('\n');
                write_private(&p, text.as_bytes())?;
                tracing::info!(path = %p.display(), key_id = %k.id(), "created a new master key file (back it up: without it the stored secrets and data cannot be read)");
                (k, KeySource::File(p))
            }
        };
        let vault = Self::with_key(cfg, master, source);
        vault.check_or_init()?;
        Ok(vault)
    }

    fn with_key(cfg: &Config, master: MasterKey, source: KeySource) -> Vault {
        let dir = &cfg.storage.data_dir;
        Vault(Arc::new(Inner {
            file: dir.join(FILE_NAME),
            lock: dir.join(LOCK_NAME),
            sealer: master.sealer(SECRETS_PURPOSE),
            master,
            source,
        }))
    }

    /// The id (public fingerprint) of the master key in use.
    pub fn key_id(&self) -> String {
        self.0.master.id()
    }

    /// Where the master key came from.
    pub fn key_source(&self) -> &KeySource {
        &self.0.source
    }

    /// The keyring the database's personal data is sealed with.
    pub fn store_keyring(&self) -> Keyring {
        Keyring::new(self.0.master.sealer(STORE_PURPOSE))
    }

    /// The database codec for `storage.encrypt`.
    pub fn store_codec(&self, encrypt: bool) -> sandra_actors::store::Codec {
        if encrypt {
            sandra_actors::store::Codec::sealed(self.store_keyring())
        } else {
            sandra_actors::store::Codec::unsealing(self.store_keyring())
        }
    }

    fn read_file(&self) -> anyhow::Result<Option<VaultFile>> {
        match std::fs::read(&self.0.file) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!("{} is not a Sandra secrets file", self.0.file.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.0.file.display())),
        }
    }

    fn write_file(&self, v: &VaultFile) -> anyhow::Result<()> {
        write_private(&self.0.file, &serde_json::to_vec_pretty(v)?)
    }

    /// Runs `f` on the file's contents under the lock and writes back what it returns.
    fn update<T>(&self, f: impl FnOnce(&mut VaultFile) -> anyhow::Result<T>) -> anyhow::Result<T> {
        if let Some(d) = self.0.lock.parent() {
            std::fs::create_dir_all(d)?;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.0.lock)
            .with_context(|| format!("opening {}", self.0.lock.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", self.0.lock.display()))?;
        let mut v = self.read_file()?.unwrap_or_else(|| VaultFile {
            format: 1,
            check: b64(&self.0.sealer.seal(CHECK_AD, CHECK_VALUE)),
            secrets: BTreeMap::new(),
        });
        let out = f(&mut v)?;
        self.write_file(&v)?;
        Ok(out)
        // The lock is released when `lock` is dropped.
    }

    /// Checks the key against the file's check record; creates the file when there is none.
    fn check_or_init(&self) -> anyhow::Result<()> {
        match self.read_file()? {
            Some(v) => self.check(&v),
            None => self.update(|_| Ok(())),
        }
    }

    fn check(&self, v: &VaultFile) -> anyhow::Result<()> {
        let sealed = unb64(&v.check, "the key check record")?;
        match self.0.sealer.open(CHECK_AD, &sealed) {
            Ok(p) if p.as_slice() == CHECK_VALUE => Ok(()),
            Ok(_) => bail!(
                "{}: the key check record holds an unexpected value",
                self.0.file.display()
            ),
            Err(e) => {
                let sealed_with = sandra_actors::at_rest::record_key_id(&sealed)
                    .map(hex::encode)
                    .unwrap_or_else(|| "?".into());
                Err(anyhow!(
                    "wrong master key: {} was sealed with key {sealed_with}, but the key from {} is {} ({e}). Start Sandra with the key that was in use; nothing was read or changed",
                    self.0.file.display(),
                    self.0.source,
                    self.key_id()
                ))
            }
        }
    }

    /// Stores `value` under `name` (a key of [`STORABLE_KEYS`]), replacing what was there.
    pub fn set(&self, name: &str, value: &SecretString) -> anyhow::Result<()> {
        check_storable(name)?;
        self.update(|v| {
            self.check(v)?;
            let rec = self
                .0
                .sealer
                .seal(name.as_bytes(), value.expose_secret().as_bytes());
            v.secrets.insert(name.to_string(), b64(&rec));
            Ok(())
        })
    }

    /// The stored value of `name`, if any. A record that does not open (altered, or copied
    /// from another name) is an error, never `None`.
    pub fn get(&self, name: &str) -> anyhow::Result<Option<SecretString>> {
        let Some(v) = self.read_file()? else {
            return Ok(None);
        };
        let Some(rec) = v.secrets.get(name) else {
            return Ok(None);
        };
        let sealed = unb64(rec, name)?;
        let plain = self
            .0
            .sealer
            .open(name.as_bytes(), &sealed)
            .map_err(|e| anyhow!("stored secret `{name}`: {e}"))?;
        let text = String::from_utf8(plain.to_vec())
            .map_err(|_| anyhow!("stored secret `{name}` is not UTF-8"))?;
        Ok(Some(SecretString::from(text)))
    }

    /// Removes `name`; returns whether it was stored.
    pub fn remove(&self, name: &str) -> anyhow::Result<bool> {
        check_storable(name)?;
        self.update(|v| {
            self.check(v)?;
            Ok(v.secrets.remove(name).is_some())
        })
    }

    /// The names stored, sorted (never the values).
    pub fn names(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .read_file()?
            .map(|v| v.secrets.into_keys().collect())
            .unwrap_or_default())
    }

    /// Layers the stored values over `cfg` (the environment still wins, see
    /// [`Config::apply_stored`]). A stored value that does not open stops start-up.
    pub fn apply_to(&self, cfg: &mut Config) -> anyhow::Result<()> {
        let mut stored = BTreeMap::new();
        for name in self.names()? {
            if let Some(v) = self.get(&name)? {
                stored.insert(name, v);
            }
        }
        cfg.apply_stored(|k| stored.get(k).cloned())?;
        Ok(())
    }
}

/// What [`rotate_key`] did.
#[derive(Debug)]
pub struct Rotation {
    pub old_id: String,
    pub new_id: String,
    /// Where the new key is. For a key file, the key file itself; for a key from the
    /// environment or a credential, `master.key.new`, which the operator must move there.
    pub new_key_at: PathBuf,
    pub source: KeySource,
}

/// Re-encrypts every stored secret and all personal data in the database under a new master
/// key (see the module notes for why an interruption loses nothing). Sandra must be stopped: the
/// database is opened here.
pub fn rotate_key(cfg: &Config, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Rotation> {
    let Some((old, source)) = find_master_key(cfg, env)? else {
        bail!(
            "there is no master key to rotate yet: start Sandra once (or run `sandra secrets set`) to create one"
        );
    };
    let pending = pending_key_path(cfg);
    if let Ok(text) = std::fs::read_to_string(&pending)
        && MasterKey::parse(&zeroize::Zeroizing::new(text)).is_ok_and(|k| k.id() == old.id())
    {
        // A finished rotation whose new key the operator has installed in the environment or
        // the credential: nothing is left to reseal.
        std::fs::remove_file(&pending)
            .with_context(|| format!("removing {}", pending.display()))?;
        return Ok(Rotation {
            old_id: old.id(),
            new_id: old.id(),
            new_key_at: pending,
            source,
        });
    }
    let new = match std::fs::read_to_string(&pending) {
        Ok(text) => {
            let text = zeroize::Zeroizing::new(text);
            let k = MasterKey::parse(&text).map_err(|e| anyhow!("{}: {e}", pending.display()))?;
            println!("finishing the interrupted rotation to key {}", k.id());
            k
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k = MasterKey::generate();
            let mut text = k.to_hex();
            text.push('\n');
            // Durable before anything is sealed with it.
            write_private(&pending, text.as_bytes())?;
            k
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", pending.display())),
    };
    let old_vault = Vault::with_key(cfg, old.clone(), source.clone());
    let new_vault = Vault::with_key(cfg, new.clone(), source.clone());

    // 1. The database: opening it with the new key (the old one still opens what it sealed)
    //    reseals every value not yet under the new key. Sled's lock refuses while Sandra runs.
    if cfg.storage.data_dir.join("sandra.sled").exists() {
        let ring = Keyring {
            current: new.sealer(STORE_PURPOSE),
            previous: Some(old.sealer(STORE_PURPOSE)),
        };
        let codec = if cfg.storage.encrypt {
            sandra_actors::store::Codec::sealed(ring)
        } else {
            sandra_actors::store::Codec::unsealing(ring)
        };
        let store = sandra_actors::store::Store::open_with(&cfg.storage.data_dir, codec)
            .context("opening the database (stop Sandra before rotating the key)")?;
        drop(store);
    }

    // 2. The secrets file, in one atomic replacement: under the old key or (when a previous run
    //    got this far) already under the new one.
    if let Some(file) = old_vault.read_file()? {
        let current = if new_vault.check(&file).is_ok() {
            &new_vault
        } else {
            old_vault.check(&file)?;
            &old_vault
        };
        let mut values = BTreeMap::new();
        for name in file.secrets.keys() {
            if let Some(v) = current.get(name)? {
                values.insert(name.clone(), v);
            }
        }
        new_vault.update(|v| {
            v.check = b64(&new_vault.0.sealer.seal(CHECK_AD, CHECK_VALUE));
            v.secrets = values
                .iter()
                .map(|(n, s)| {
                    let rec = new_vault
                        .0
                        .sealer
                        .seal(n.as_bytes(), s.expose_secret().as_bytes());
                    (n.clone(), b64(&rec))
                })
                .collect();
            Ok(())
        })?;
    }

    // 3. The key itself.
    let new_key_at = match &source {
        KeySource::File(p) => {
            let mut text = new.to_hex();
            text.push('\n');
            write_private(p, text.as_bytes())?;
            std::fs::remove_file(&pending)
                .with_context(|| format!("removing {}", pending.display()))?;
            p.clone()
        }
        // The operator must install it; start-up refuses until `master.key.new` is gone, so the
        // old key cannot be used by mistake against data it no longer opens.
        KeySource::Env | KeySource::Credential(_) => pending,
    };
    Ok(Rotation {
        old_id: old.id(),
        new_id: new.id(),
        new_key_at,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        let mut c = Config::default();
        c.storage.data_dir = dir.join("data");
        c
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    fn file_text(cfg: &Config) -> String {
        std::fs::read_to_string(cfg.storage.data_dir.join(FILE_NAME)).unwrap()
    }

    #[test]
    fn secrets_round_trip_encrypted_under_a_new_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let v = Vault::open_with_env(&cfg, &no_env).unwrap();
        v.set("whatsapp.access_token", &secret("EAAG-the-token"))
            .unwrap();
        v.set("whatsapp.phone_number_id", &secret("1234567"))
            .unwrap();
        assert_eq!(
            v.get("whatsapp.access_token")
                .unwrap()
                .unwrap()
                .expose_secret(),
            "EAAG-the-token"
        );
        assert_eq!(
            v.names().unwrap(),
            ["whatsapp.access_token", "whatsapp.phone_number_id"]
        );
        assert!(!file_text(&cfg).contains("EAAG-the-token"));
        // Another handle (the CLI while the server runs) sees the same values.
        let again = Vault::open_with_env(&cfg, &no_env).unwrap();
        assert_eq!(again.key_id(), v.key_id());
        assert!(again.remove("whatsapp.access_token").unwrap());
        assert!(!again.remove("whatsapp.access_token").unwrap());
        assert!(v.get("whatsapp.access_token").unwrap().is_none());
        // Only the listed config keys can be stored.
        let e = v.set("whatsapp.graph_base_url", &secret("x")).unwrap_err();
        assert!(e.to_string().contains("whatsapp.access_token"), "{e}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&cfg.storage.master_key_path()), 0o600);
            assert_eq!(mode(&cfg.storage.data_dir), 0o700);
            assert_eq!(mode(&cfg.storage.data_dir.join(FILE_NAME)), 0o600);
        }
    }

    #[test]
    fn a_tampered_record_or_one_moved_to_another_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let v = Vault::open_with_env(&cfg, &no_env).unwrap();
        v.set("whatsapp.access_token", &secret("token-1")).unwrap();
        v.set("whatsapp.app_secret", &secret("secret-1")).unwrap();
        let path = cfg.storage.data_dir.join(FILE_NAME);
        let original: VaultFile = serde_json::from_str(&file_text(&cfg)).unwrap();

        // One bit flipped in the ciphertext.
        let mut f: VaultFile = serde_json::from_str(&file_text(&cfg)).unwrap();
        let mut rec = unb64(&f.secrets["whatsapp.access_token"], "t").unwrap();
        *rec.last_mut().unwrap() ^= 0x01;
        f.secrets.insert("whatsapp.access_token".into(), b64(&rec));
        std::fs::write(&path, serde_json::to_vec(&f).unwrap()).unwrap();
        let e = v.get("whatsapp.access_token").unwrap_err().to_string();
        assert!(e.contains("altered"), "{e}");

        // The app secret's record copied over the token's name.
        let mut f = original;
        let moved = f.secrets["whatsapp.app_secret"].clone();
        f.secrets.insert("whatsapp.access_token".into(), moved);
        std::fs::write(&path, serde_json::to_vec(&f).unwrap()).unwrap();
        assert!(v.get("whatsapp.access_token").is_err());
        assert_eq!(
            v.get("whatsapp.app_secret")
                .unwrap()
                .unwrap()
                .expose_secret(),
            "secret-1"
        );
    }

    #[test]
    fn a_wrong_or_missing_master_key_stops_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let v = Vault::open_with_env(&cfg, &no_env).unwrap();
        v.set("llm.openai.api_key", &secret("sk-1")).unwrap();
        let other = MasterKey::generate().to_hex();
        let env = |k: &str| (k == MASTER_KEY_ENV).then(|| other.to_string());
        let e = Vault::open_with_env(&cfg, &env).unwrap_err().to_string();
        assert!(e.contains("wrong master key"), "{e}");
        assert!(e.contains(&v.key_id()) && e.contains(MASTER_KEY_ENV), "{e}");
        // A key that is not 32 bytes of hex or base64.
        let env = |k: &str| (k == MASTER_KEY_ENV).then(|| "not-a-key".to_string());
        let e = Vault::open_with_env(&cfg, &env).unwrap_err().to_string();
        assert!(e.contains("64 hex digits"), "{e}");
        // The key file lost: no new key is made over sealed secrets.
        std::fs::remove_file(cfg.storage.master_key_path()).unwrap();
        let e = Vault::open_with_env(&cfg, &no_env).unwrap_err().to_string();
        assert!(e.contains("Restore the key"), "{e}");
        assert!(!cfg.storage.master_key_path().exists());
    }

    #[test]
    fn the_key_comes_from_the_environment_then_the_credential_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let creds = dir.path().join("creds");
        std::fs::create_dir_all(&creds).unwrap();
        let cred_key = MasterKey::generate();
        std::fs::write(creds.join(CREDENTIAL_NAME), cred_key.to_hex().as_bytes()).unwrap();
        let env_key = MasterKey::generate();
        let both = |k: &str| match k {
            MASTER_KEY_ENV => Some(env_key.to_hex().to_string()),
            "CREDENTIALS_DIRECTORY" => Some(creds.display().to_string()),
            _ => None,
        };
        let (k, src) = find_master_key(&cfg, &both).unwrap().unwrap();
        assert_eq!((k.id(), src), (env_key.id(), KeySource::Env));
        let cred_only =
            |k: &str| (k == "CREDENTIALS_DIRECTORY").then(|| creds.display().to_string());
        let (k, src) = find_master_key(&cfg, &cred_only).unwrap().unwrap();
        assert_eq!(k.id(), cred_key.id());
        assert!(matches!(src, KeySource::Credential(_)));
        assert!(find_master_key(&cfg, &no_env).unwrap().is_none());
    }

    #[test]
    fn the_environment_wins_over_stored_values_which_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("config.toml");
        std::fs::write(
            &toml,
            format!(
                "[storage]\ndata_dir = {:?}\n[whatsapp]\naccess_token = \"from-file\"\napp_secret = \"file-secret\"\nphone_number_id = \"1\"\n",
                dir.path().join("data")
            ),
        )
        .unwrap();
        let env = |k: &str| (k == "WHATSAPP_ACCESS_TOKEN").then(|| "from-env".to_string());
        let mut cfg = Config::load_with_env(Some(&toml), env).unwrap();
        let v = Vault::open_with_env(&cfg, &no_env).unwrap();
        v.set("whatsapp.access_token", &secret("stored-token"))
            .unwrap();
        v.set("whatsapp.app_secret", &secret("stored-secret"))
            .unwrap();
        v.set("whatsapp.api_version", &secret("v25.0")).unwrap();
        v.apply_to(&mut cfg).unwrap();
        assert_eq!(cfg.whatsapp.access_token.expose_secret(), "from-env");
        assert_eq!(cfg.whatsapp.app_secret.expose_secret(), "stored-secret");
        assert_eq!(cfg.whatsapp.api_version, "v25.0");
        assert_eq!(cfg.whatsapp.phone_number_id, "1");
        // A stored value that makes no sense is refused naming the key.
        v.set("whatsapp.api_version", &secret("latest")).unwrap();
        let e = v.apply_to(&mut cfg).unwrap_err().to_string();
        assert!(e.contains("whatsapp.api_version"), "{e}");
    }

    #[test]
    fn rotating_the_key_keeps_every_secret_and_all_stored_data_readable() {
        use sandra_actors::store::{Codec, Store};
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let v = Vault::open_with_env(&cfg, &no_env).unwrap();
        v.set("whatsapp.access_token", &secret("tok")).unwrap();
        v.set("email.smtp_url", &secret("smtp://u:p@h")).unwrap();
        let old_id = v.key_id();
        let old_key = std::fs::read_to_string(cfg.storage.master_key_path()).unwrap();
        {
            let store = Store::open_with(&cfg.storage.data_dir, v.store_codec(true)).unwrap();
            store.dead_letter(b"a body to keep", "test").unwrap();
        }
        // An interrupted earlier attempt left its new key behind: start-up refuses, and the
        // next rotation finishes with that very key.
        let pending = MasterKey::generate();
        std::fs::write(pending_key_path(&cfg), pending.to_hex().as_bytes()).unwrap();
        let e = Vault::open_with_env(&cfg, &no_env).unwrap_err().to_string();
        assert!(e.contains("rotate-key"), "{e}");
        let r = rotate_key(&cfg, &no_env).unwrap();
        assert_eq!(
            (r.old_id.as_str(), r.new_id.as_str()),
            (old_id.as_str(), pending.id().as_str())
        );
        assert!(!pending_key_path(&cfg).exists());

        let v = Vault::open_with_env(&cfg, &no_env).unwrap();
        assert_eq!(v.key_id(), pending.id());
        assert_eq!(
            v.get("whatsapp.access_token")
                .unwrap()
                .unwrap()
                .expose_secret(),
            "tok"
        );
        assert_eq!(
            v.get("email.smtp_url").unwrap().unwrap().expose_secret(),
            "smtp://u:p@h"
        );
        let store = Store::open_with(&cfg.storage.data_dir, v.store_codec(true)).unwrap();
        assert_eq!(store.dead_letters().unwrap()[0].body, "a body to keep");
        drop(store);
        // The old key opens nothing any more.
        let old = Keyring::new(MasterKey::parse(&old_key).unwrap().sealer(STORE_PURPOSE));
        let e = Store::open_with(&cfg.storage.data_dir, Codec::sealed(old)).unwrap_err();
        assert!(e.to_string().contains(&pending.id()), "{e}");
    }

    #[test]
    fn rotating_a_key_from_the_environment_leaves_the_new_key_for_the_operator() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let key = MasterKey::generate();
        let env_key = key.to_hex().to_string();
        let env = move |k: &str| (k == MASTER_KEY_ENV).then(|| env_key.clone());
        let v = Vault::open_with_env(&cfg, &env).unwrap();
        v.set("whatsapp.verify_token", &secret("vt")).unwrap();
        assert!(!cfg.storage.master_key_path().exists());
        let r = rotate_key(&cfg, &env).unwrap();
        assert_eq!(r.new_key_at, pending_key_path(&cfg));
        // Until the operator installs it, the old key is refused.
        assert!(Vault::open_with_env(&cfg, &env).is_err());
        let new_key = std::fs::read_to_string(&r.new_key_at).unwrap();
        let new_env = move |k: &str| (k == MASTER_KEY_ENV).then(|| new_key.clone());
        let done = rotate_key(&cfg, &new_env).unwrap();
        assert_eq!(done.old_id, done.new_id);
        let v = Vault::open_with_env(&cfg, &new_env).unwrap();
        assert_eq!(
            v.get("whatsapp.verify_token")
                .unwrap()
                .unwrap()
                .expose_secret(),
            "vt"
        );
    }
}
