//! Passwords: generated, kept out of `Debug`, hashed the way RabbitMQ hashes them.

use super::*;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// RabbitMQ's `rabbit_password_hashing_sha256` hash of `password` with `salt`:
/// base64(salt ++ sha256(salt ++ password)).
pub fn hash_password_with_salt(password: &str, salt: [u8; 4]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    let mut bytes = salt.to_vec();
    bytes.extend_from_slice(&hasher.finalize());
    BASE64.encode(bytes)
}

/// [`hash_password_with_salt`] with a random salt.
pub fn hash_password(password: &str) -> String {
    let random = uuid::Uuid::new_v4();
    let b = random.as_bytes();
    hash_password_with_salt(password, [b[0], b[1], b[2], b[3]])
}

/// Whether `hash` (in [`HASHING_ALGORITHM`]) is the hash of `password`.
pub fn verify_password_hash(hash: &str, password: &str) -> bool {
    match BASE64.decode(hash) {
        Ok(bytes) if bytes.len() == 4 + 32 => {
            let salt = [bytes[0], bytes[1], bytes[2], bytes[3]];
            hash_password_with_salt(password, salt) == hash
        }
        _ => false,
    }
}

/// A fresh password: 32 hex digits from a random v4 UUID (122 random bits), safe in URLs
/// and env files.
pub fn generate_password() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A password that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub(super) String);

impl Password {
    /// Wraps a password.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The password itself: only for URLs, files and the broker.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// The passwords [`setup`] sets: given ones replace a user's password; remembered ones
/// (from an earlier credentials file) are used for users that do not exist yet; any
/// other new user gets a generated one, and an existing user keeps its password.
#[derive(Clone, Debug, Default)]
pub struct Passwords {
    pub(super) given: BTreeMap<Role, Password>,
    pub(super) remembered: BTreeMap<Role, Password>,
}

impl Passwords {
    /// The passwords in `BATON_PASSWORD_<ROLE>` variables; an empty one is an error.
    pub fn from_env() -> Result<Self, BrokerSetupError> {
        let mut passwords = Self::default();
        for role in Role::ALL {
            let var = role.password_var();
            if let Some(value) = std::env::var_os(&var) {
                let value = value
                    .into_string()
                    .map_err(|_| BrokerSetupError::BadPassword {
                        var: var.clone(),
                        problem: "it is not UTF-8",
                    })?;
                if value.is_empty() {
                    return Err(BrokerSetupError::BadPassword {
                        var,
                        problem: "it is empty (unset it to have one generated)",
                    });
                }
                passwords.given.insert(role, Password(value));
            }
        }
        Ok(passwords)
    }

    /// Sets `role`'s password (replacing the user's current one).
    pub fn with(mut self, role: Role, password: &str) -> Self {
        self.given.insert(role, Password::new(password));
        self
    }

    /// Remembers the passwords of an earlier credentials file, for users created again.
    pub fn remember_file(&mut self, path: &Path) {
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if let Some(role) = Role::ALL.into_iter().find(|r| r.password_var() == key) {
                if !value.is_empty() {
                    self.remembered.insert(role, Password::new(value));
                }
            }
        }
    }
}

/// Where a user's password came from, for the summary `setup` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    /// `BATON_PASSWORD_<ROLE>` (or [`Passwords::with`]).
    Given,
    /// The earlier credentials file.
    Remembered,
    /// Generated now.
    Generated,
    /// The user existed and keeps the password it had (unknown to this run).
    Kept,
}

/// One user [`setup`] created or updated.
#[derive(Clone, Debug)]
pub struct UserCredential {
    /// Its role.
    pub role: Role,
    /// `<prefix>-<role>`.
    pub user: String,
    /// Its password, when this run knows it.
    pub password: Option<Password>,
    /// Where the password came from.
    pub source: PasswordSource,
}

/// The users of one prefix on one vhost.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The prefix.
    pub prefix: String,
    /// The vhost the permissions are on.
    pub vhost: String,
    /// One per role, in [`Role::ALL`] order.
    pub users: Vec<UserCredential>,
}

impl Credentials {
    /// `role`'s password, if known.
    pub fn password(&self, role: Role) -> Option<&str> {
        self.users
            .iter()
            .find(|u| u.role == role)
            .and_then(|u| u.password.as_ref())
            .map(Password::expose)
    }

    /// `amqp://<prefix>-<role>:<password>@<address>/<vhost>`, if the password is known.
    pub fn amqp_url(&self, role: Role, address: &str) -> Option<String> {
        let password = self.password(role)?;
        Some(format!(
            "amqp://{}:{}@{address}/{}",
            percent_encode(&role.user(&self.prefix)),
            percent_encode(password),
            percent_encode(&self.vhost)
        ))
    }

    /// The credentials file: `BATON_PASSWORD_<ROLE>=…` and `AMQP_URL_<ROLE>=…` lines,
    /// usable as a shell or compose env file.
    pub fn env_file(&self, amqp_address: &str, api_address: &str) -> String {
        let mut out = format!(
            "# RabbitMQ users of Baton prefix {} on vhost {}, written by `baton broker setup`.\n\
             # Secret: keep this file mode 0600. Re-running setup keeps these passwords.\n",
            self.prefix, self.vhost
        );
        for u in &self.users {
            let var = u.role.password_var();
            match &u.password {
                Some(password) => {
                    out.push_str(&format!("{var}={}\n", password.expose()));
                    let url = match u.role {
                        Role::Monitor => format!(
                            "http://{}:{}@{api_address}",
                            percent_encode(&u.user),
                            percent_encode(password.expose())
                        ),
                        _ => self.amqp_url(u.role, amqp_address).unwrap_or_default(),
                    };
                    out.push_str(&format!("{}={url}\n", u.role.url_var()));
                }
                None => out.push_str(&format!(
                    "# {}: password kept on the broker, unknown to this run (set {var} and run setup again to set one)\n",
                    u.user
                )),
            }
        }
        out
    }
}
