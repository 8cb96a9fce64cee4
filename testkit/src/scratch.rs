//! Scratch names: a test's own prefix, database, directory and files, unique per call.
//!
//! Every name is built from [`scratch_id`], whose letters can never form a run of
//! digits: Baton masks any run of 12 or more digits as a card number (in logs, error
//! messages, tool output), so a prefix made of hexadecimal could come out of an error
//! message as `test-****6499` about once in 280 tests.

use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Twelve random lower-case letters `a`…`p` (48 random bits: each hexadecimal digit of a
/// random UUID's first twelve mapped to a letter). Never a digit, so no masker ever takes
/// part of it for a card number, and it is valid in a prefix, a queue, a broker user, a
/// PostgreSQL database name and a file name.
pub fn scratch_id() -> String {
    let random = Uuid::new_v4().as_u128();
    // The first twelve nibbles of a version-4 UUID are all random (the version and variant
    // bits come later).
    (0..12)
        .map(|i| {
            let nibble = (random >> (124 - 4 * i)) & 0xf;
            char::from(b'a' + nibble as u8)
        })
        .collect()
}

/// `len` random hexadecimal digits with a letter `a`…`f` at every eighth place: a trace or
/// span id for a `traceparent` (which must be hexadecimal), never holding 12 decimal
/// digits in a row, so the masker keeps it whole in a log (it masks a hexadecimal id that
/// starts or ends with 12 digits, about 0.7 % of random trace ids).
pub fn scratch_hex(len: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut random = Uuid::new_v4().as_u128();
    let mut left = 32;
    (0..len)
        .map(|i| {
            if left == 0 {
                random = Uuid::new_v4().as_u128();
                left = 32;
            }
            let nibble = (random & 0xf) as u8;
            random >>= 4;
            left -= 1;
            if i % 8 == 0 {
                char::from(b'a' + nibble % 6)
            } else {
                char::from(HEX[usize::from(nibble)])
            }
        })
        .collect()
}

/// `<what>-<scratch id>`: a test's topology prefix (`test-…`, `chaos-…`, `roles-…`,
/// `tls-…`; `.ci/sweep-test-leftovers` knows these), or a node, instance or directory name.
pub fn scratch_name(what: &str) -> String {
    format!("{what}-{}", scratch_id())
}

/// A path in the temporary directory, `baton-<what>-<scratch id><suffix>`, not created.
pub fn scratch_path(what: &str, suffix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("baton-{}{suffix}", scratch_name(what)))
}

/// A directory of the test's own in the temporary directory, removed (with all in it)
/// when dropped, on panic too.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates `baton-<what>-<scratch id>` in the temporary directory. Its path is the
    /// canonical one (no symbolic link in it), as a process working in it would print it.
    pub fn new(what: &str) -> Self {
        let dir = scratch_path(what, "");
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Self(std::fs::canonicalize(&dir).expect("a scratch directory's path"))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` in the directory and returns its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, text).expect("write a scratch file");
        path
    }
}

/// The directory's path: `dir.join("ledger.db")`, `&dir` where a `&Path` is wanted.
impl std::ops::Deref for ScratchDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An SQLite database file of the test's own in the temporary directory (not created:
/// whoever opens it does), removed with its `-wal` and `-shm` files when dropped.
#[derive(Debug)]
pub struct ScratchSqlite(PathBuf);

impl ScratchSqlite {
    /// `baton-<what>-<scratch id>.db` in the temporary directory.
    pub fn new(what: &str) -> Self {
        Self(scratch_path(what, ".db"))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Its `sqlite://` URL.
    pub fn url(&self) -> String {
        sqlite_url(&self.0)
    }
}

impl Drop for ScratchSqlite {
    fn drop(&mut self) {
        remove_sqlite(&self.0);
    }
}

/// The `sqlite://` URL of a database file.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Removes an SQLite database file and its `-wal` and `-shm` files, if there.
pub fn remove_sqlite(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_id_is_twelve_letters_and_never_a_digit() {
        let ids: Vec<String> = (0..2000).map(|_| scratch_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 12, "{id}");
            assert!(id.bytes().all(|b| (b'a'..=b'p').contains(&b)), "{id}");
        }
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "48 random bits do not repeat here");
        // Every letter turns up: the mapping uses the whole nibble.
        for letter in b'a'..=b'p' {
            assert!(ids.iter().any(|id| id.as_bytes().contains(&letter)));
        }
    }

    #[test]
    fn the_masker_never_touches_a_scratch_name() {
        for _ in 0..2000 {
            let name = format!("{}.requests", scratch_name("test"));
            assert_eq!(baton_contract::mask_card_numbers(&name), name);
        }
    }

    #[test]
    fn a_scratch_hex_id_is_hexadecimal_and_kept_whole_by_the_masker() {
        for _ in 0..2000 {
            let (trace, span) = (scratch_hex(32), scratch_hex(16));
            assert_eq!((trace.len(), span.len()), (32, 16));
            assert!(trace
                .bytes()
                .chain(span.bytes())
                .all(|b| b.is_ascii_hexdigit()));
            assert!(!trace
                .bytes()
                .chain(span.bytes())
                .any(|b| b.is_ascii_uppercase()));
            let line = format!("traceparent=00-{trace}-{span}-01 trace_id={trace}");
            assert_eq!(baton_contract::mask_card_numbers(&line), line);
        }
    }

    #[test]
    fn scratch_files_and_directories_go_when_dropped() {
        let dir = ScratchDir::new("testkit");
        let file = dir.file("a.txt", "x");
        assert!(file.is_file());
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());

        let db = ScratchSqlite::new("testkit");
        assert!(db.url().starts_with("sqlite:///") && db.url().ends_with(".db"));
        for suffix in ["", "-wal", "-shm"] {
            std::fs::write(format!("{}{suffix}", db.path().display()), "x").unwrap();
        }
        let path = db.path().to_owned();
        drop(db);
        for suffix in ["", "-wal", "-shm"] {
            assert!(!Path::new(&format!("{}{suffix}", path.display())).exists());
        }
    }
}
