//! Ed25519 key files for checkpoint signatures, and the exact message a checkpoint signs.
//!
//! Key files are one line of lowercase hex: the 32-byte secret seed (`.key`, mode 0600) or the
//! 32-byte public key (`.pub`). This module does not decide when to sign (writer) or what a bad
//! signature means (verify).

use std::{
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use super::{AuditError, record::Timestamp, segment::Hash};

/// Domain separation: a checkpoint signature can never be mistaken for a signature over
/// anything else made with the same key.
const CHECKPOINT_CONTEXT: &[u8] = b"dnsward-audit checkpoint v1\0";

/// The signed bytes: context ‖ head_seq (u64 BE) ‖ head hash ‖ time (µs since epoch, i64 BE).
pub fn checkpoint_message(head_seq: u64, head: &Hash, time: Timestamp) -> Vec<u8> {
    let mut message = Vec::with_capacity(CHECKPOINT_CONTEXT.len() + 8 + 32 + 8);
    message.extend_from_slice(CHECKPOINT_CONTEXT);
    message.extend_from_slice(&head_seq.to_be_bytes());
    message.extend_from_slice(head);
    message.extend_from_slice(&time.as_micros().to_be_bytes());
    message
}

pub fn sign(key: &SigningKey, head_seq: u64, head: &Hash, time: Timestamp) -> Signature {
    key.sign(&checkpoint_message(head_seq, head, time))
}

/// Whether `sig_hex` is a valid signature by `key` over the checkpoint.
pub fn verify_signature(
    key: &VerifyingKey,
    head_seq: u64,
    head: &Hash,
    time: Timestamp,
    sig_hex: &str,
) -> bool {
    let mut bytes = [0u8; 64];
    if hex::decode_to_slice(sig_hex, &mut bytes).is_err() {
        return false;
    }
    key.verify(
        &checkpoint_message(head_seq, head, time),
        &Signature::from_bytes(&bytes),
    )
    .is_ok()
}

/// The two paths `keygen` writes for `prefix`: `<dir>/audit.key` and `.pub` when `prefix` is an
/// existing directory, else `<prefix>.key` and `<prefix>.pub`.
pub fn key_paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let base = if prefix.is_dir() {
        prefix.join("audit")
    } else if prefix
        .extension()
        .is_some_and(|ext| ext == "key" || ext == "pub")
    {
        // `--out site1.key` names the key file itself, not a prefix for `site1.key.key`.
        prefix.with_extension("")
    } else {
        prefix.to_owned()
    };
    let with_ext = |ext: &str| {
        let mut name = base.as_os_str().to_owned();
        name.push(ext);
        PathBuf::from(name)
    };
    (with_ext(".key"), with_ext(".pub"))
}

/// Generates a key pair and writes it; never overwrites an existing file (a lost private key
/// makes every past checkpoint unverifiable against a new public key). Both files are written
/// under temporary names and linked into place, so a failure (a file in the way, a full disk)
/// leaves neither: a private key without its public one would block every retry.
pub fn keygen(prefix: &Path) -> Result<(PathBuf, PathBuf), AuditError> {
    let (secret_path, public_path) = key_paths(prefix);
    // The directory the private key goes into, whether given or the prefix's.
    refuse_foreign_dir(parent_dir(&secret_path))?;
    // A first look, for a clear message; the links below are what never replace a file.
    for path in [&secret_path, &public_path] {
        if path.exists() {
            return Err(AuditError::KeyExists { path: path.clone() });
        }
    }
    let seed: [u8; 32] = rand::random();
    let key = SigningKey::from_bytes(&seed);
    let (secret_partial, public_partial) = (partial(&secret_path), partial(&public_path));
    let secret_hex = hex::encode(key.to_bytes());
    let public_hex = hex::encode(key.verifying_key().as_bytes());
    let written = write_new(&secret_partial, &secret_hex, 0o600)
        .and_then(|()| write_new(&public_partial, &public_hex, 0o644))
        .and_then(|()| place(&secret_partial, &secret_path, &secret_hex, 0o600))
        .and_then(|()| {
            place(&public_partial, &public_path, &public_hex, 0o644).inspect_err(|_| {
                let _ = std::fs::remove_file(&secret_path);
            })
        });
    let _ = std::fs::remove_file(&secret_partial);
    let _ = std::fs::remove_file(&public_partial);
    written?;
    sync_parent(&secret_path)?;
    Ok((secret_path, public_path))
}

/// Writes a new key for `anonymize = "hash"` to `path`: 32 random bytes as one line of hex
/// (the whole file is the HMAC key), mode 0600, in a directory only its owner can change, never
/// over an existing file (a replaced key would hash the same clients differently from then on).
pub fn anonymize_keygen(path: &Path) -> Result<PathBuf, AuditError> {
    refuse_foreign_dir(parent_dir(path))?;
    if path.exists() {
        return Err(AuditError::KeyExists {
            path: path.to_owned(),
        });
    }
    let secret: [u8; 32] = rand::random();
    let text = hex::encode(secret);
    let staged = partial(path);
    let written =
        write_new(&staged, &text, 0o600).and_then(|()| place(&staged, path, &text, 0o600));
    let _ = std::fs::remove_file(&staged);
    written?;
    sync_parent(path)?;
    Ok(path.to_owned())
}

/// The directory a file named by `path` goes into (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."))
}

/// Where a key file is written before it is linked into place.
fn partial(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".partial-{}", std::process::id()));
    PathBuf::from(name)
}

/// Syncs the directory of a file just linked into it, so the name survives a power cut.
fn sync_parent(path: &Path) -> Result<(), AuditError> {
    let dir = parent_dir(path);
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(AuditError::io(dir))
}

/// A directory given as `--out` holds the private key: one that another user owns, or that others
/// may write to, would let them swap the key file for one they know (the file's own 0600 mode
/// does not stop a rename in its directory).
fn refuse_foreign_dir(dir: &Path) -> Result<(), AuditError> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(dir).map_err(AuditError::io(dir))?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(AuditError::KeyDir {
            path: dir.to_owned(),
            reason: "another user owns this directory, who could replace the private key in \
                     it; give a directory of your own",
        });
    }
    // The sticky bit (`/tmp`) keeps others from renaming or removing what they do not own.
    if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
        return Err(AuditError::KeyDir {
            path: dir.to_owned(),
            reason: "others may write to this directory, and so replace the private key in \
                     it; give one only you can write to",
        });
    }
    Ok(())
}

/// Gives the written file `from` the name `to` too, unless something already has it (a link
/// never replaces). Where links are not supported (vfat, exFAT, some network file systems),
/// writes `text` to `to` as a new file instead.
fn place(from: &Path, to: &Path, text: &str, mode: u32) -> Result<(), AuditError> {
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(AuditError::KeyExists {
                path: to.to_owned(),
            })
        }
        Err(_) => write_new(to, text, mode).map_err(|error| match error {
            AuditError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
                AuditError::KeyExists {
                    path: to.to_owned(),
                }
            }
            other => other,
        }),
    }
}

fn write_new(path: &Path, hex_text: &str, mode: u32) -> Result<(), AuditError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(AuditError::io(path))?;
    writeln!(file, "{hex_text}").map_err(AuditError::io(path))?;
    file.sync_all().map_err(AuditError::io(path))
}

fn read_hex32(path: &Path) -> Result<[u8; 32], AuditError> {
    let text = crate::files::read_regular_text(path).map_err(AuditError::io(path))?;
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| AuditError::Key {
        path: path.to_owned(),
        reason: "expected one line of 64 hex digits",
    })?;
    Ok(bytes)
}

/// Loads the private key. Refuses a `.pub` file: also 64 hex digits, so it would load, and
/// checkpoints signed with it could be forged by anyone who has the public key.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, AuditError> {
    if path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("pub"))
    {
        return Err(AuditError::Key {
            path: path.to_owned(),
            reason: "this is the public key; signing needs the .key file that keygen wrote \
                     beside it",
        });
    }
    Ok(SigningKey::from_bytes(&read_hex32(path)?))
}

/// Why the private key file is open to more than its owner and group, if it is: other users
/// can read it (and so sign checkpoints), or its group can change it. A warning, not a
/// refusal: secret mounts (Kubernetes 0644, Docker 0444) are often read-only and
/// world-readable inside a container that runs nothing else.
pub fn exposure(path: &Path) -> Option<String> {
    let mode = loose_mode(path)?;
    Some(format!(
        "{}: mode {mode:o} lets other users read the audit signing key (or its group change \
         it), and whoever reads it can sign checkpoints; chmod 600 it (640 for a service group)",
        path.display(),
    ))
}

/// [`exposure`] for the `anonymize = "hash"` key: whoever reads it can undo the hashing of an
/// IPv4 client by hashing all 2³² addresses, which takes minutes.
pub fn anonymize_key_exposure(path: &Path) -> Option<String> {
    let mode = loose_mode(path)?;
    Some(format!(
        "{}: mode {mode:o} lets other users read the audit anonymize key (or its group change \
         it), and whoever reads it with the log can recover hashed client addresses by trying \
         every address; chmod 600 it (640 for a service group)",
        path.display(),
    ))
}

/// The file's permission bits if others may read it or its group change it.
fn loose_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        (mode & 0o027 != 0).then_some(mode & 0o777)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, AuditError> {
    VerifyingKey::from_bytes(&read_hex32(path)?).map_err(|_| AuditError::Key {
        path: path.to_owned(),
        reason: "not a valid Ed25519 public key (the private .key file? give the .pub file \
                 that keygen wrote)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_sign_verify_and_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keygen(dir.path()).unwrap();
        assert_eq!(secret, dir.path().join("audit.key"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let key = load_signing_key(&secret).unwrap();
        let public = load_verifying_key(&public).unwrap();
        let time = Timestamp::from_micros(42);
        let sig = hex::encode(sign(&key, 9, &[1; 32], time).to_bytes());
        assert!(verify_signature(&public, 9, &[1; 32], time, &sig));
        assert!(!verify_signature(&public, 10, &[1; 32], time, &sig));
        assert!(!verify_signature(&public, 9, &[2; 32], time, &sig));
        assert!(matches!(
            keygen(dir.path()),
            Err(AuditError::KeyExists { .. })
        ));
    }

    #[test]
    fn a_public_key_does_not_sign_and_an_exposed_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keygen(dir.path()).unwrap();
        let error = load_signing_key(&public).unwrap_err().to_string();
        assert!(error.contains("this is the public key"), "{error}");
        assert_eq!(exposure(&secret), None, "keygen writes it 600");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let set = |mode| {
                std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).unwrap()
            };
            for exposed in [0o644, 0o604, 0o660, 0o602, 0o444] {
                set(exposed);
                let warning = exposure(&secret).unwrap_or_default();
                assert!(
                    warning.contains(&format!("mode {exposed:o}")),
                    "{exposed:o}: {warning}"
                );
                load_signing_key(&secret).unwrap();
            }
            for private in [0o600, 0o640, 0o400] {
                set(private);
                assert_eq!(exposure(&secret), None, "{private:o}");
            }
        }
    }

    /// A file in the way of the public key (here a dangling symbolic link) fails keygen and
    /// leaves no private key behind (it did, and blocked every retry); `.PUB` is a public key.
    #[test]
    fn keygen_writes_both_files_or_neither() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("b");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("b.pub")).unwrap();
        assert!(matches!(
            keygen(&prefix),
            Err(AuditError::KeyExists { ref path }) if path.ends_with("b.pub")
        ));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left, ["b.pub"], "nothing but the link");
        std::fs::remove_file(dir.path().join("b.pub")).unwrap();
        let (_, public) = keygen(&prefix).unwrap();
        let upper = dir.path().join("b.PUB");
        std::fs::copy(&public, &upper).unwrap();
        let error = load_signing_key(&upper).unwrap_err().to_string();
        assert!(error.contains("this is the public key"), "{error}");
    }

    /// A directory given as `--out` must be the caller's (or root's) and written by nobody else.
    #[test]
    fn keygen_refuses_a_directory_others_can_change() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = keygen(&shared).unwrap_err().to_string();
        assert!(error.contains("others may write"), "{error}");
        assert!(!shared.join("audit.key").exists());
        // Given as a prefix inside it, the same (the key would be written there all the same).
        let error = keygen(&shared.join("site1")).unwrap_err().to_string();
        assert!(error.contains("others may write"), "{error}");
        assert!(!error.contains("not a key file"), "{error}");
        assert!(!shared.join("site1.key").exists());
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        keygen(&shared).unwrap();
        keygen(&shared.join("site1")).unwrap();
        if rustix::process::geteuid().is_root() {
            let theirs = dir.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let error = keygen(&theirs).unwrap_err().to_string();
            assert!(error.contains("another user owns"), "{error}");
        }
    }

    /// The anonymize key: 32 random bytes in hex, mode 0600, never over an existing file, and
    /// read by the writer as a valid key.
    #[test]
    fn anonymize_keygen_writes_a_fresh_secret_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anon.key");
        anonymize_keygen(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert!(text.trim().bytes().all(|b| b.is_ascii_hexdigit()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let error = anonymize_keygen(&path).unwrap_err();
        assert!(matches!(error, AuditError::KeyExists { .. }), "{error}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "not replaced"
        );
        let other = dir.path().join("other.key");
        anonymize_keygen(&other).unwrap();
        assert_ne!(std::fs::read_to_string(&other).unwrap(), text);
        let settings = crate::audit::AuditSettings {
            anonymize: crate::audit::Anonymize::Hash,
            anonymize_key: Some(path),
            ..crate::audit::AuditSettings::default()
        };
        crate::audit::writer::check_anonymize_key(&settings).unwrap();
        assert!(anonymize_key_exposure(settings.anonymize_key.as_ref().unwrap()).is_none());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 2, "no partial file left");
    }

    #[test]
    fn prefix_paths() {
        let (secret, public) = key_paths(Path::new("/nonexistent/site1"));
        assert_eq!(secret, Path::new("/nonexistent/site1.key"));
        assert_eq!(public, Path::new("/nonexistent/site1.pub"));
        // The key file's own name given: not `site1.key.key`.
        for given in ["/nonexistent/site1.key", "/nonexistent/site1.pub"] {
            let (secret, public) = key_paths(Path::new(given));
            assert_eq!(secret, Path::new("/nonexistent/site1.key"));
            assert_eq!(public, Path::new("/nonexistent/site1.pub"));
        }
    }
}
