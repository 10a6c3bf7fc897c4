//! The served-state snapshot under `<data_dir>/served/`: every list file exactly as it was loaded
//! (stored by SHA-256) and a manifest of the generation now serving.
//!
//! `lists diff` compares an edit on disk with this, so an admin previews a change against what is
//! really live, not against whatever the files held at start. The copies also let an auditor
//! recover the exact list content behind any generation the audit log names by hash.

use std::{
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{BlockAction, ListKind, ListMode},
    state::State,
};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: in use by another running dnsward ({holder}); the serving generations of two \
         instances would overwrite each other's record, so give each its own server.data_dir",
        dir.display()
    )]
    InUse { dir: PathBuf, holder: String },
    #[error("{path}: unreadable manifest: {source}", path = path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The manifest of the serving generation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub generation: u64,
    /// Unix time in milliseconds when this generation went live.
    pub loaded_at_ms: u64,
    pub config_path: String,
    pub lists: Vec<ManifestList>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestList {
    pub name: String,
    pub path: String,
    pub sha256: String,
    pub kind: ListKind,
    pub mode: ListMode,
    pub action: BlockAction,
    pub ede: u16,
    /// The `sinkhole` action's addresses (absent when none; and in manifests written before
    /// 2026-12-03, which previews then take for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sinkhole_v4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sinkhole_v6: Option<Ipv6Addr>,
    pub rules: usize,
}

/// List copies not referenced by the serving manifest are pruned after this long.
const KEEP_UNREFERENCED: Duration = Duration::from_secs(90 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct Snapshot {
    dir: PathBuf,
}

impl Snapshot {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("served"),
        }
    }

    /// Takes the lock on this record (`served/.lock`, an exclusive `flock`) for as long as the
    /// returned file is open: a second instance on the same data directory would overwrite the
    /// manifest with its own generation, and `lists diff` and auditors would read the wrong
    /// lists. `Ok(None)` when the lock cannot be taken for another reason (a read-only disk):
    /// the record is kept best effort, so that alone does not stop a resolver.
    pub fn lock(&self) -> Result<Option<std::fs::File>, SnapshotError> {
        let path = self.dir.join(".lock");
        let opened = std::fs::create_dir_all(&self.dir).and_then(|()| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        });
        let Ok(file) = opened else {
            return Ok(None);
        };
        match crate::files::try_lock(file, &path) {
            Ok(Ok(file)) => Ok(Some(file)),
            Ok(Err(held)) => Err(SnapshotError::InUse {
                dir: self.dir.parent().unwrap_or(&self.dir).to_owned(),
                holder: held.holder,
            }),
            Err(_) => Ok(None),
        }
    }

    fn lists_dir(&self) -> PathBuf {
        self.dir.join("lists")
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join("serving.json")
    }

    /// Where the copy of a list with this hash lives.
    pub fn list_path(&self, sha256_hex: &str) -> PathBuf {
        self.lists_dir().join(format!("{sha256_hex}.txt"))
    }

    /// Keeps a copy of list bytes as loaded (a no-op if that content is already kept).
    pub fn keep_list(&self, sha256: &[u8; 32], bytes: &[u8]) -> Result<(), SnapshotError> {
        let path = self.list_path(&hex::encode(sha256));
        if path.exists() {
            return Ok(());
        }
        write_atomically(&path, bytes)
    }

    /// Records `state` as the serving generation, and prunes old unreferenced copies.
    pub fn write_manifest(&self, state: &State) -> Result<(), SnapshotError> {
        let manifest = Manifest {
            generation: state.generation,
            loaded_at_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64),
            config_path: state.config.path.display().to_string(),
            lists: state
                .policy
                .lists()
                .iter()
                .map(|list| ManifestList {
                    name: list.name.to_string(),
                    path: list.display_path.to_string(),
                    sha256: hex::encode(list.sha256),
                    kind: list.kind,
                    mode: list.mode,
                    action: list.action,
                    ede: list.ede,
                    sinkhole_v4: list.sinkhole_v4,
                    sinkhole_v6: list.sinkhole_v6,
                    rules: list.matcher.len(),
                })
                .collect(),
        };
        self.replace_manifest(&manifest)
    }

    /// Writes `manifest` over the one serving until now, then prunes. The copies the old one
    /// named are touched first: a copy's age is what `prune` goes by, and it must count from
    /// when the copy stopped serving, not from when it was first loaded (a list that served
    /// unchanged for months would otherwise go the moment a reload replaced it).
    fn replace_manifest(&self, manifest: &Manifest) -> Result<(), SnapshotError> {
        if let Ok(previous) = self.read_manifest() {
            for list in &previous.lists {
                // Best effort: a copy that cannot be touched only ages from its last write.
                // Never backwards: a clock far behind (a board without a real-time clock,
                // before its time sync) would make the copy look decades old.
                let _ = std::fs::File::options()
                    .write(true)
                    .open(self.list_path(&list.sha256))
                    .and_then(|file| {
                        let modified = file.metadata()?.modified()?;
                        file.set_modified(modified.max(SystemTime::now()))
                    });
            }
        }
        // Serialising plain strings and numbers cannot fail.
        let text = serde_json::to_vec_pretty(manifest).unwrap_or_default();
        write_atomically(&self.manifest_path(), &text)?;
        self.prune(manifest);
        Ok(())
    }

    pub fn read_manifest(&self) -> Result<Manifest, SnapshotError> {
        let path = self.manifest_path();
        let text = std::fs::read(&path).map_err(|source| SnapshotError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| SnapshotError::Manifest { path, source })
    }

    fn prune(&self, manifest: &Manifest) {
        let Ok(entries) = std::fs::read_dir(self.lists_dir()) else {
            return;
        };
        // Not the raw wall clock: a forward step would make every copy look old at once, and
        // they are what ties older audit records to the list content that decided.
        let (now, _) = crate::clock::process().now();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let referenced = manifest
                .lists
                .iter()
                .any(|list| name == format!("{}.txt", list.sha256));
            let old = entry
                .metadata()
                .and_then(|metadata| metadata.modified())
                .is_ok_and(|modified| {
                    now.duration_since(modified).unwrap_or_default() > KEEP_UNREFERENCED
                });
            if !referenced && old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Write to a temporary file and rename: a reader never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(generation: u64, hashes: &[&str]) -> Manifest {
        Manifest {
            generation,
            loaded_at_ms: 0,
            config_path: "dnsward.toml".into(),
            lists: hashes
                .iter()
                .map(|sha256| ManifestList {
                    name: "exchanges".into(),
                    path: "lists/exchanges.txt".into(),
                    sha256: (*sha256).into(),
                    kind: ListKind::Block,
                    mode: ListMode::Enforce,
                    action: BlockAction::Nxdomain,
                    ede: 15,
                    sinkhole_v4: None,
                    sinkhole_v6: None,
                    rules: 1,
                })
                .collect(),
        }
    }

    /// A list that served unchanged for 200 days, then replaced by a reload: its copy is kept
    /// (it is what ties those 200 days of audit records to their rules); one that stopped
    /// serving long ago goes.
    #[test]
    fn a_copy_ages_from_when_it_stopped_serving() {
        let tmp = tempfile::tempdir().unwrap();
        let snapshot = Snapshot::new(tmp.path());
        let (served_long, replaced_long_ago, new) =
            ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        for hash in [&served_long, &replaced_long_ago, &new] {
            let path = snapshot.list_path(hash);
            write_atomically(&path, b"binance.com\n").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(SystemTime::now() - Duration::from_secs(200 * 86_400))
                .unwrap();
        }
        write_atomically(
            &snapshot.manifest_path(),
            &serde_json::to_vec(&manifest(1, &[&served_long])).unwrap(),
        )
        .unwrap();
        snapshot.replace_manifest(&manifest(2, &[&new])).unwrap();
        assert!(
            snapshot.list_path(&served_long).exists(),
            "served until now"
        );
        assert!(snapshot.list_path(&new).exists(), "serving");
        assert!(
            !snapshot.list_path(&replaced_long_ago).exists(),
            "unreferenced for 200 days"
        );

        // A touch never moves a copy's time back (a clock far behind at that moment).
        let later = SystemTime::now() + Duration::from_secs(10 * 86_400);
        let path = snapshot.list_path(&new);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        snapshot.replace_manifest(&manifest(3, &[])).unwrap();
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(modified >= later - Duration::from_secs(1), "{modified:?}");
    }
}
