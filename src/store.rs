//! Caches on object storage: `cache-teacher --out` and `train-student --cache` (and
//! `inspect`, `verify`) accept `s3://`, `gs://`, `az://` and `file://` URLs through the
//! `object_store` crate.
//!
//! Both stages keep working on a local directory, the *staging* directory
//! (`$DISTILL_STAGING/<url hash>`, default under the system temp dir), and this module moves
//! files between it and the bucket:
//! - stage one uploads each shard as soon as it is finished, then the partial manifest, and
//!   the final manifest last; a rerun anywhere first pulls what the bucket holds, so an
//!   interrupted capture resumes from the shards that reached the bucket;
//! - stage two downloads the manifest, then a background thread fetches the shards in the
//!   order training will read them, a few ahead, so the training loop does not wait; each
//!   shard's checksum is verified as it is read, as for a local cache.
//!
//! Credentials come from the usual environment variables of each service (`AWS_*`,
//! `GOOGLE_*`, `AZURE_*`, read by `object_store`'s `from_env` builders) and are never
//! logged: messages name the URL and the object.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::cache::manifest::{self, sha256_bytes, write_atomic};
use crate::error::{Error, Result};

/// Where a cache lives.
pub enum Location {
    Local(PathBuf),
    Remote(Remote),
}

/// Is this argument an object-storage URL (not a plain path)?
pub fn is_url(p: &Path) -> bool {
    let s = p.to_string_lossy();
    ["s3://", "gs://", "az://", "azure://", "abfs://", "abfss://", "file://"].iter().any(|x| s.starts_with(x))
}

impl Location {
    /// `file:///x` and plain paths are local; `s3://`, `gs://`, `az://` are remote.
    pub fn parse(p: &Path) -> Result<Location> {
        let s = p.to_string_lossy().to_string();
        if let Some(rest) = s.strip_prefix("file://") {
            return Ok(Location::Local(PathBuf::from(rest)));
        }
        if !is_url(p) {
            return Ok(Location::Local(p.to_path_buf()));
        }
        Remote::open(&s).map(Location::Remote)
    }
}

/// A cache directory in a bucket.
pub struct Remote {
    /// The URL as given (never holds credentials: those come from the environment).
    pub url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    rt: Arc<tokio::runtime::Runtime>,
}

fn store_err(url: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Store { url: url.to_string(), message: format!("{what}: {}", credentials_hint(&e.to_string())) }
}

/// An error of the cloud's instance-metadata endpoint means no credentials were found in the
/// environment (the client falls back to it last); say that instead of quoting the endpoint.
fn credentials_hint(message: &str) -> String {
    if message.contains("169.254.169.254") || message.contains("metadata.google.internal") {
        return "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (s3://), \
                GOOGLE_SERVICE_ACCOUNT or GOOGLE_APPLICATION_CREDENTIALS (gs://), or AZURE_STORAGE_ACCOUNT_NAME and \
                AZURE_STORAGE_ACCOUNT_KEY (az://); without them the client asks the cloud's instance-metadata \
                endpoint, which is not reachable here"
            .into();
    }
    message.to_string()
}

impl Remote {
    pub fn open(url: &str) -> Result<Remote> {
        let parsed = url::Url::parse(url).map_err(|e| store_err(url, "not a valid URL", e))?;
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "s3" => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| store_err(url, "cannot configure S3 (AWS_* environment variables)", e))?,
            ),
            "gs" => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| store_err(url, "cannot configure Google Cloud Storage (GOOGLE_* environment variables)", e))?,
            ),
            "az" | "azure" | "abfs" | "abfss" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| store_err(url, "cannot configure Azure Blob Storage (AZURE_* environment variables)", e))?,
            ),
            other => return Err(store_err(url, "unsupported scheme", format!("`{other}` (supported: s3, gs, az, file)"))),
        };
        let prefix = ObjectPath::from_url_path(parsed.path()).map_err(|e| store_err(url, "bad path in URL", e))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| store_err(url, "cannot start the I/O runtime", e))?;
        Ok(Remote { url: url.trim_end_matches('/').to_string(), store, prefix, rt: Arc::new(rt) })
    }

    fn key(&self, name: &str) -> ObjectPath {
        self.prefix.clone().join(name)
    }

    fn what(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }

    /// The object's bytes, or `None` if it does not exist.
    pub fn get(&self, name: &str) -> Result<Option<bytes::Bytes>> {
        let key = self.key(name);
        self.rt
            .block_on(async {
                match self.store.get(&key).await {
                    Ok(r) => r.bytes().await.map(Some),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .map_err(|e| store_err(&self.url, &format!("cannot read {}", self.what(name)), e))
    }

    pub fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let key = self.key(name);
        self.rt
            .block_on(self.store.put(&key, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| store_err(&self.url, &format!("cannot write {}", self.what(name)), e))
    }

    pub fn delete(&self, name: &str) -> Result<()> {
        let key = self.key(name);
        match self.rt.block_on(self.store.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(&self.url, &format!("cannot delete {}", self.what(name)), e)),
        }
    }

    /// Names and sizes of the objects directly under the prefix.
    pub fn list(&self) -> Result<Vec<(String, u64)>> {
        let prefix = self.prefix.clone();
        let metas: Vec<object_store::ObjectMeta> =
            self.rt.block_on(self.store.list(Some(&prefix)).try_collect()).map_err(|e| store_err(&self.url, "cannot list the cache", e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let rel = m.location.prefix_match(&prefix)?.map(|p| p.as_ref().to_string()).collect::<Vec<_>>();
                (rel.len() == 1).then(|| (rel[0].clone(), m.size))
            })
            .collect())
    }

    /// The local directory that mirrors this URL.
    pub fn staging_dir(&self) -> PathBuf {
        let base = std::env::var_os("DISTILL_STAGING").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("distill-staging"));
        base.join(&sha256_bytes(self.url.as_bytes())[..16])
    }

    /// Download the manifests called `names` that exist, the shards they list and the
    /// tokenizer, where the staging directory lacks them or holds another size: what a
    /// capture (or one part of it) needs to resume from the bucket.
    pub fn pull_manifests(&self, dir: &Path, names: &[&str]) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for name in names.iter().copied().chain([manifest::TOKENIZER_FILE]) {
            let Some(b) = self.get(name)? else { continue };
            let local = dir.join(name);
            write_atomic(&local, &b)?;
            if name == manifest::TOKENIZER_FILE {
                continue;
            }
            // An unreadable manifest is left for stage one to report (or replace with --overwrite).
            let Ok(m) = manifest::Manifest::read_file(&local) else { continue };
            for s in &m.shards {
                let path = dir.join(&s.file);
                if !plain_name(&s.file) || std::fs::metadata(&path).map(|x| x.len() == s.bytes).unwrap_or(false) {
                    continue;
                }
                if let Some(b) = self.get(&s.file)? {
                    write_atomic(&path, &b)?;
                }
            }
        }
        Ok(())
    }

    /// Download every object of the cache that the staging directory lacks or holds at
    /// another size (merge needs every part).
    pub fn pull_all(&self, dir: &Path) -> Result<usize> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut n = 0;
        for (name, size) in self.list()? {
            if !plain_name(&name) {
                continue;
            }
            let local = dir.join(&name);
            if std::fs::metadata(&local).map(|m| m.len() == size).unwrap_or(false) {
                continue;
            }
            if let Some(b) = self.get(&name)? {
                write_atomic(&local, &b)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// A file name a cache may hold (no directories, no hidden temporaries).
fn plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains('/') && !name.contains("..")
}

/// Keeps a bucket in step with stage one's staging directory: uploads new or changed
/// files, shards before manifests, and deletes objects whose local file is gone (the
/// partial manifest at the end).
pub struct Uploader {
    remote: Remote,
    dir: PathBuf,
    /// name -> (size, sha256) of what the bucket holds (empty sha: not known here).
    sent: Mutex<HashMap<String, (u64, String)>>,
    /// Files this directory has held: only these are ever deleted from the bucket (other
    /// workers' shards and part manifests in the same prefix are never touched).
    seen: Mutex<std::collections::HashSet<String>>,
}

impl Uploader {
    pub fn new(remote: Remote, dir: PathBuf) -> Result<Uploader> {
        // What is already there counts as sent only if the local copy has the same bytes.
        let mut sent = HashMap::new();
        for (name, size) in remote.list()? {
            let local = dir.join(&name);
            if let Ok(b) = std::fs::read(&local)
                && b.len() as u64 == size
            {
                sent.insert(name, (size, sha256_bytes(&b)));
            } else {
                sent.insert(name, (size, String::new()));
            }
        }
        Ok(Uploader { remote, dir, sent: Mutex::new(sent), seen: Mutex::default() })
    }

    pub fn url(&self) -> &str {
        &self.remote.url
    }

    /// Upload what changed; with `prune`, delete from the bucket what this directory held
    /// and no longer has (the partial manifest once the capture is complete).
    pub fn sync(&self, prune: bool) -> Result<()> {
        let mut sent = self.sent.lock().expect("uploader lock");
        let mut seen = self.seen.lock().expect("uploader lock");
        let mut files: Vec<String> = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| plain_name(n))
            .collect();
        // Data first, manifests last: a manifest never names a shard the bucket lacks.
        files.sort_by_key(|n| (n.starts_with(manifest::MANIFEST_STEM), n.clone()));
        seen.extend(files.iter().cloned());
        for name in &files {
            let path = self.dir.join(name);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                // Removed since it was listed (a partial manifest replaced by the complete one).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&path, e)),
            };
            let sha = sha256_bytes(&bytes);
            if sent.get(name).is_some_and(|(s, h)| *s == bytes.len() as u64 && *h == sha) {
                continue;
            }
            let size = bytes.len() as u64;
            self.remote.put(name, bytes)?;
            sent.insert(name.clone(), (size, sha));
        }
        if prune {
            let gone: Vec<String> = seen.iter().filter(|n| !files.contains(n)).cloned().collect();
            for name in gone {
                self.remote.delete(&name)?;
                sent.remove(&name);
                seen.remove(&name);
            }
        }
        Ok(())
    }
}

/// Fetches a remote cache's shards into the staging directory ahead of training.
pub struct Prefetcher {
    url: String,
    state: Arc<(Mutex<FetchState>, Condvar)>,
    handle: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct FetchState {
    done: HashMap<String, std::result::Result<(), String>>,
    /// Shards the trainer has asked for so far (the fetcher stays `ahead` of it).
    consumed: usize,
    stop: bool,
}

impl Prefetcher {
    /// Start fetching `names` (in this order) into `dir`, at most `ahead` shards ahead of
    /// the last one [`Prefetcher::wait`] returned. Files already there at `sizes` are kept.
    pub fn start(remote: Remote, dir: PathBuf, names: Vec<(String, u64)>, ahead: usize) -> Prefetcher {
        let state = Arc::new((Mutex::new(FetchState::default()), Condvar::new()));
        let st = state.clone();
        let url = remote.url.clone();
        let handle = std::thread::spawn(move || {
            for (i, (name, size)) in names.iter().enumerate() {
                {
                    let (lock, cv) = &*st;
                    let mut s = lock.lock().expect("prefetch lock");
                    while !s.stop && i > s.consumed + ahead {
                        s = cv.wait(s).expect("prefetch lock");
                    }
                    if s.stop {
                        return;
                    }
                }
                let local = dir.join(name);
                let result = if std::fs::metadata(&local).map(|m| m.len() == *size).unwrap_or(false) {
                    Ok(())
                } else {
                    match remote.get(name) {
                        Ok(Some(b)) => write_atomic(&local, &b).map_err(|e| e.to_string()),
                        Ok(None) => Err(format!("{name}: the manifest lists this shard but the bucket does not hold it")),
                        Err(Error::Store { message, .. }) => Err(message),
                        Err(e) => Err(e.to_string()),
                    }
                };
                let (lock, cv) = &*st;
                lock.lock().expect("prefetch lock").done.insert(name.clone(), result);
                cv.notify_all();
            }
        });
        Prefetcher { url, state, handle: Some(handle) }
    }

    /// Block until shard `name` is in the staging directory.
    pub fn wait(&self, name: &str) -> Result<()> {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().expect("prefetch lock");
        loop {
            if let Some(r) = s.done.get(name) {
                let r = r.clone();
                s.consumed += 1;
                cv.notify_all();
                return r.map_err(|m| Error::Store { url: self.url.clone(), message: m });
            }
            s = cv.wait(s).expect("prefetch lock");
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        let (lock, cv) = &*self.state;
        lock.lock().expect("prefetch lock").stop = true;
        cv.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Where a command that writes a cache (cache-teacher, merge) works: the output directory
/// itself, or for an object-storage URL its staging directory, which starts from what the
/// bucket holds and is uploaded as the work goes (shards before manifests). The directory's
/// locks are held from when it is taken to the last upload (when the `Staging` is dropped).
pub struct Staging {
    /// The local directory the command writes.
    pub dir: PathBuf,
    /// The URL it mirrors, for a remote cache.
    url: Option<String>,
    /// Not yet pulled from (taken by [`Staging::take`]).
    remote: Option<Remote>,
    uploader: Option<Arc<Uploader>>,
    lock: Box<LockFn>,
    pull: Pull,
    held: Option<Vec<crate::lock::DirLock>>,
}

/// How a command locks its output directory (the locks it returns are held until the end).
pub type LockFn = dyn Fn(&Path) -> Result<Vec<crate::lock::DirLock>>;

/// What a staging directory brings from the bucket once it is locked.
pub enum Pull {
    /// These manifests, the shards they list and the tokenizer (resuming a capture).
    Manifests(Vec<String>),
    /// Every object (a merge needs every part).
    All,
}

impl Staging {
    /// The directory `out` names, locked by `lock` and filled by `pull` when it is taken. A
    /// URL's staging directory is taken at once, before any other work (another run on the
    /// same URL shares it); a local directory when [`Staging::take`] is called, once the
    /// inputs are known to be usable, so a refused run creates nothing.
    pub fn open(out: &Path, lock: impl Fn(&Path) -> Result<Vec<crate::lock::DirLock>> + 'static, pull: Pull) -> Result<Staging> {
        let (dir, url, remote) = match Location::parse(out)? {
            Location::Local(dir) => (dir, None, None),
            Location::Remote(remote) => (remote.staging_dir(), Some(remote.url.clone()), Some(remote)),
        };
        let mut staging = Staging { dir, url, remote, uploader: None, lock: Box::new(lock), pull, held: None };
        if staging.url.is_some() {
            staging.take()?;
        }
        Ok(staging)
    }

    /// Take the directory, once: its locks, then for a URL what the bucket holds.
    pub fn take(&mut self) -> Result<()> {
        if self.held.is_some() {
            return Ok(());
        }
        self.held = Some((self.lock)(&self.dir)?);
        if let Some(remote) = self.remote.take() {
            match &self.pull {
                Pull::Manifests(names) => {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    remote.pull_manifests(&self.dir, &names)?
                }
                Pull::All => {
                    remote.pull_all(&self.dir)?;
                }
            }
            self.uploader = Some(Arc::new(Uploader::new(remote, self.dir.clone())?));
        }
        Ok(())
    }

    /// Uploads what changed (after each finished shard); `None` for a local directory.
    pub fn sync_fn(&self) -> Option<impl Fn() -> Result<()> + Send + Sync + 'static> {
        self.uploader.clone().map(|up| move || up.sync(false))
    }

    /// The last upload (with `prune`, objects this run removed locally are deleted from the
    /// bucket), under the locks; returns where the cache is: the URL, or the directory.
    pub fn finish(self, prune: bool) -> Result<PathBuf> {
        if let Some(up) = &self.uploader {
            up.sync(prune)?;
        }
        Ok(self.url.clone().map(PathBuf::from).unwrap_or_else(|| self.dir.clone()))
    }
}

/// A cache ready to read: a local directory, and for a remote cache the prefetcher that
/// fills it.
pub struct OpenedCache {
    pub dir: PathBuf,
    pub remote: Option<Remote>,
}

/// Resolve `--cache` for reading: a local directory as is; for a URL, download the
/// manifest (and tokenizer) into the staging directory. Shards come later (see
/// [`Prefetcher`] or [`fetch_all`]).
pub fn open_for_reading(cache: &Path) -> Result<OpenedCache> {
    match Location::parse(cache)? {
        Location::Local(dir) => Ok(OpenedCache { dir, remote: None }),
        Location::Remote(remote) => {
            let dir = remote.staging_dir();
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            let man = remote.get(manifest::MANIFEST_FILE)?.ok_or_else(|| Error::Store {
                url: remote.url.clone(),
                message: format!("no {} there: not a cache, or its capture has not finished", manifest::MANIFEST_FILE),
            })?;
            write_atomic(&dir.join(manifest::MANIFEST_FILE), &man)?;
            if let Some(t) = remote.get(manifest::TOKENIZER_FILE)? {
                write_atomic(&dir.join(manifest::TOKENIZER_FILE), &t)?;
            }
            Ok(OpenedCache { dir, remote: Some(remote) })
        }
    }
}

/// A local directory holding the whole cache at `cache` (a path, or a URL whose manifest
/// and shards are downloaded into the staging directory): for `inspect`, `verify`, `eval`.
pub fn local_copy(cache: &Path) -> Result<PathBuf> {
    let opened = open_for_reading(cache)?;
    if let Some(remote) = &opened.remote {
        let m = manifest::Manifest::read(&opened.dir)?;
        for s in &m.shards {
            let (name, size) = (&s.file, s.bytes);
            let local = opened.dir.join(name);
            if std::fs::metadata(&local).map(|m| m.len() == size).unwrap_or(false) {
                continue;
            }
            let b = remote.get(name)?.ok_or_else(|| Error::Store {
                url: remote.url.clone(),
                message: format!("{name}: the manifest lists this shard but the bucket does not hold it"),
            })?;
            write_atomic(&local, &b)?;
        }
    }
    Ok(opened.dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// object_store's error when no AWS credentials are set (its last resort is the instance
    /// metadata endpoint) becomes a message about credentials; other errors pass unchanged.
    #[test]
    fn a_missing_credential_is_named() {
        let imds = "Generic S3 error: Error performing token request: Error after 0 retries in 2.1s, max_retries:10, \
                    retry_timeout:180s, source:error sending request for url (http://169.254.169.254/latest/api/token)";
        let said = credentials_hint(imds);
        assert!(said.starts_with("no credentials found: set AWS_ACCESS_KEY_ID") && !said.contains("api/token"), "{said}");
        assert_eq!(credentials_hint("Object at location x not found"), "Object at location x not found");
    }
}
