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

fn check_name(name: &str) -> anyhow::Result<()> {
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
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(&p)
                    .with_context(|| format!("reading the master key credential {}", p.display()))?,
            );
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
            Ok(_) => bail!("{}: the key check record holds an unexpected value", self.0.file.display()),
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
        check_name(name)?;
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
        check_name(name)?;
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
pub fn rotate_key(
    cfg: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Rotation> {
    let Some((old, source)) = find_master_key(cfg, env)? else {
        bail!("there is no master key to rotate yet: start Sandra once (or run `sandra secrets set`) to create one");
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
