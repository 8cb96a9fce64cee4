//! Card fingerprints: a keyed HMAC-SHA256 of a card number, so a step such as risk can
//! recognise a card (a block list, a velocity count) without ever receiving its number.
//!
//! A fingerprint reads `<key_id>:<64 hex digits>`: the HMAC-SHA256, under the key
//! `key_id`, of the card number's digits. The key id travels with it so keys can be
//! rotated: the orchestrator fingerprints with the *first* key of its key file, and a
//! consumer (the risk service) accepts every key of its own file.
//!
//! The key file holds one key per line, `<key_id> <secret as hex, at least 64 hex
//! digits (32 bytes)>`; blank lines and lines starting with `#` are ignored. Key ids are
//! 1–32 characters of `A-Z a-z 0-9 _ . -`. Secrets never leave this module: they are
//! turned into HMAC states at load time, and neither `Debug` nor any error shows them.
//!
//! Not here: which step gets a fingerprint (the workflow's `card = "fingerprint"`) and
//! what a consumer does with it (the reference risk rules).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

/// The key file `baton run` and `baton-risk` use when none is given: created (mode 0600,
/// one random key) in the working directory by whichever starts first, so a development
/// machine works out of the box. Production passes the same file to both explicitly.
pub const DEFAULT_CARD_KEY_FILE: &str = "baton-card.key";

/// Smallest accepted secret, in bytes.
const MIN_SECRET_BYTES: usize = 32;
/// Longest accepted key id.
const MAX_KEY_ID: usize = 32;

/// A key file that could not be used: names the file (and line) and the problem, never
/// the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardKeyError(String);

impl fmt::Display for CardKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CardKeyError {}

struct CardKey {
    id: String,
    /// The keyed HMAC state; cloned for each fingerprint. The secret itself is not kept.
    mac: Hmac<Sha256>,
}

/// The card keys of one process: the first makes fingerprints, all are accepted when
/// matching. Cheap to clone. `Debug` shows the key ids only.
#[derive(Clone)]
pub struct CardKeys {
    keys: Arc<Vec<CardKey>>,
}

impl fmt::Debug for CardKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CardKeys")
            .field("key_ids", &self.key_ids().collect::<Vec<_>>())
            .finish()
    }
}

fn valid_key_id(id: &str) -> bool {
    (1..=MAX_KEY_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random number generator");
    bytes
}

impl CardKeys {
    /// Parses key file text; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, CardKeyError> {
        let fail = |line: usize, problem: &str| {
            CardKeyError(format!(
                "card key file {source_name} line {line}: {problem}"
            ))
        };
        let mut keys: Vec<CardKey> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(id), Some(secret), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(fail(
                    i + 1,
                    "expected `<key_id> <hex secret>` (two fields separated by a space)",
                ));
            };
            if !valid_key_id(id) {
                return Err(fail(
                    i + 1,
                    "the key id must be 1-32 characters of A-Z, a-z, 0-9, '_', '.' or '-'",
                ));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(fail(
                    i + 1,
                    &format!("key id {id:?} appears twice; key ids must be unique"),
                ));
            }
            let secret = decode_hex(secret)
                .filter(|s| s.len() >= MIN_SECRET_BYTES)
                .ok_or_else(|| {
                    fail(
                        i + 1,
                        "the secret must be at least 64 hex digits (32 bytes); make one with \
                         `openssl rand -hex 32`",
                    )
                })?;
            let mac =
                Hmac::<Sha256>::new_from_slice(&secret).expect("HMAC accepts a key of any length");
            keys.push(CardKey {
                id: id.to_owned(),
                mac,
            });
        }
        if keys.is_empty() {
            return Err(CardKeyError(format!(
                "card key file {source_name} holds no key; add a line `<key_id> <hex secret>` \
                 (e.g. `k1 ` followed by the output of `openssl rand -hex 32`)"
            )));
        }
        Ok(Self {
            keys: Arc::new(keys),
        })
    }

    /// Reads and parses a key file.
    pub fn load(path: &Path) -> Result<Self, CardKeyError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            CardKeyError(format!(
                "cannot read card key file {name}: {e}; pass --card-key-file FILE \
                 (BATON_CARD_KEY_FILE) naming a file of `<key_id> <hex secret>` lines"
            ))
        })?;
        Self::parse(&text, &name)
    }

    /// Loads `path`, or creates it with one new random key when it does not exist (mode
    /// 0600; atomically, so two processes starting at once end up with the same key).
    /// Returns the keys and whether this call created the file.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), CardKeyError> {
        if path.exists() {
            return Self::load(path).map(|keys| (keys, false));
        }
        let name = path.display().to_string();
        let cannot = |e: std::io::Error| {
            CardKeyError(format!(
                "cannot create card key file {name}: {e}; pass --card-key-file FILE \
                 (BATON_CARD_KEY_FILE)"
            ))
        };
        let id = format!("local-{}", &hex(&random_bytes::<4>()));
        let text = format!(
            "# Baton card key file, created at start because none existed. One key per \
             line: <key_id> <hex secret>;\n# the first line makes fingerprints, every \
             line is accepted. See README \"Card fingerprints and key rotation\".\n{}",
            Self::new_key_line(&id)
        );
        let temporary = path.with_extension(format!("tmp-{}", hex(&random_bytes::<6>())));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = options
            .open(&temporary)
            .and_then(|mut file| file.write_all(text.as_bytes()).and(file.sync_all()));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(cannot(e));
        }
        // A hard link fails if the name exists: the first process to get there wins and
        // everyone else reads its file.
        let linked = std::fs::hard_link(&temporary, path);
        let _ = std::fs::remove_file(&temporary);
        match linked {
            Ok(()) => Self::load(path).map(|keys| (keys, true)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::load(path).map(|keys| (keys, false))
            }
            Err(e) => Err(cannot(e)),
        }
    }

    /// A warning when the key file can be read by its group or by others (Unix), naming
    /// the fix; `None` when only the owner can read it.
    pub fn permission_warning(path: &Path) -> Option<String> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Some(format!(
                    "card key file {} is readable by its group or others (mode {mode:03o}): \
                     run `chmod 600 {}`",
                    path.display(),
                    path.display()
                ));
            }
        }
        #[cfg(not(unix))]
        let _ = path;
        None
    }

    /// One in-memory random key named `key_id` (tests, `baton demo`).
    pub fn generate(key_id: &str) -> Self {
        Self::parse(&Self::new_key_line(key_id), "(generated)")
            .expect("a generated key line is valid")
    }

    /// A key file line `<key_id> <64 random hex digits>\n`, for a new key.
    pub fn new_key_line(key_id: &str) -> String {
        format!("{key_id} {}\n", hex(&random_bytes::<32>()))
    }

    /// The key ids, the fingerprinting key first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// Whether `key_id` is one of these keys.
    pub fn knows(&self, key_id: &str) -> bool {
        self.keys.iter().any(|k| k.id == key_id)
    }

    /// The fingerprint of `card_number` under the first key: `<key_id>:<hex>`. Only the
    /// digits count, so `4242 4242 4242 4242` and `4242424242424242` match.
    pub fn fingerprint(&self, card_number: &str) -> String {
        Self::fingerprint_with(&self.keys[0], card_number)
    }

    /// The fingerprints of `card_number` under every key, the first key's first: what a
    /// consumer compares a command's fingerprint with during a rotation.
    pub fn fingerprints(&self, card_number: &str) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| Self::fingerprint_with(k, card_number))
            .collect()
    }

    fn fingerprint_with(key: &CardKey, card_number: &str) -> String {
        let mut mac = key.mac.clone();
        for b in card_number.bytes().filter(u8::is_ascii_digit) {
            mac.update(&[b]);
        }
        format!("{}:{}", key.id, hex(&mac.finalize().into_bytes()))
    }
}

/// The key id of a fingerprint (`k1` of `k1:3f9a…`), if it has the documented shape.
pub fn fingerprint_key_id(fingerprint: &str) -> Option<&str> {
    let (id, digest) = fingerprint.split_once(':')?;
    (valid_key_id(id) && digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "k1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";

    #[test]
    fn a_fingerprint_is_the_documented_hmac() {
        let keys = CardKeys::parse(K1, "t").unwrap();
        let fp = keys.fingerprint("4242424242424242");
        // HMAC-SHA256(key 00..1f, "4242424242424242"), computed independently with
        // `printf %s 4242424242424242 | openssl dgst -sha256 -mac HMAC -macopt hexkey:00…1f`.
        assert_eq!(fp, format!("k1:{}", EXPECTED_4242));
        assert_eq!(keys.fingerprint("4242 4242-4242 4242"), fp, "digits only");
        assert_eq!(fingerprint_key_id(&fp), Some("k1"));
        assert!(!fp.contains("4242424242424242"));
    }

    const EXPECTED_4242: &str = "48d3ef48958e5d182cfa74268ab27bf11de5fab824385436670ecf7242d0002c";

    #[test]
    fn fingerprints_are_stable_per_key_and_differ_across_keys() {
        let a = CardKeys::generate("a");
        let b = CardKeys::generate("b");
        let card = "4100000000000019";
        assert_eq!(a.fingerprint(card), a.fingerprint(card));
        assert_ne!(a.fingerprint(card), a.fingerprint("4242424242424242"));
        let (fa, fb) = (a.fingerprint(card), b.fingerprint(card));
        assert_ne!(fa[2..], fb[2..], "another key, another digest");
        let same_id_other_secret = CardKeys::generate("a");
        assert_ne!(fa, same_id_other_secret.fingerprint(card));
    }

    #[test]
    fn a_rotated_file_makes_new_fingerprints_and_accepts_old_ones() {
        let old = CardKeys::parse(K1, "old").unwrap();
        let rotated_text = format!("{}{K1}", CardKeys::new_key_line("k2"));
        let rotated = CardKeys::parse(&rotated_text, "rotated").unwrap();
        let card = "4100000000000019";
        assert!(rotated.fingerprint(card).starts_with("k2:"));
        assert_eq!(rotated.key_ids().collect::<Vec<_>>(), ["k2", "k1"]);
        assert!(rotated.fingerprints(card).contains(&old.fingerprint(card)));
        assert!(rotated.knows("k1") && !old.knows("k2"));
    }

    #[test]
    fn bad_files_are_explained_without_the_secret() {
        let secret = "00112233445566778899aabbccddeeff";
        let short = CardKeys::parse(&format!("k1 {secret}\n"), "f.key").unwrap_err();
        assert!(
            short.0.contains("f.key line 1") && short.0.contains("64 hex"),
            "{short}"
        );
        assert!(!short.0.contains(secret), "{short}");
        let one_field = CardKeys::parse("# c\n\nk1\n", "f.key").unwrap_err();
        assert!(one_field.0.contains("line 3"), "{one_field}");
        let bad_id = CardKeys::parse(&K1.replace("k1", "k:1"), "f.key").unwrap_err();
        assert!(bad_id.0.contains("key id"), "{bad_id}");
        let twice = CardKeys::parse(&format!("{K1}{K1}"), "f.key").unwrap_err();
        assert!(twice.0.contains("twice"), "{twice}");
        let empty = CardKeys::parse("# nothing\n", "f.key").unwrap_err();
        assert!(empty.0.contains("no key"), "{empty}");
        let debug = format!("{:?}", CardKeys::parse(K1, "t").unwrap());
        assert_eq!(debug, "CardKeys { key_ids: [\"k1\"] }");
    }

    #[test]
    fn the_default_file_is_created_once_private_and_then_reused() {
        let dir =
            std::env::temp_dir().join(format!("baton-card-key-{}", hex(&random_bytes::<6>())));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(DEFAULT_CARD_KEY_FILE);
        let (first, created) = CardKeys::load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(CardKeys::permission_warning(&path), None, "created 0600");
        let (second, created) = CardKeys::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(
            first.fingerprint("4242424242424242"),
            second.fingerprint("4242424242424242")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let warning = CardKeys::permission_warning(&path).unwrap();
            assert!(warning.contains("chmod 600"), "{warning}");
        }
        let missing = CardKeys::load(&dir.join("nope.key")).unwrap_err();
        assert!(missing.0.contains("--card-key-file"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
