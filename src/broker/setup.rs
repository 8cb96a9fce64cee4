//! Users and permissions onto a running broker, or into a definitions file.

use super::*;
use baton_amqp::BrokerError;
use hyper::Method;
use serde_json::json;
use std::collections::BTreeMap;

/// Creates or updates the users `<prefix>-<role>` on `vhost` with [`grant`]'s
/// permissions (replacing any others they had there). Idempotent: an existing user keeps
/// its password unless `passwords` gives a new one.
pub async fn setup(
    api: &AdminApi,
    prefix: &str,
    vhost: &str,
    passwords: &Passwords,
) -> Result<Credentials, BrokerSetupError> {
    let v = percent_encode(vhost);
    if api
        .expect(Method::GET, &format!("/vhosts/{v}"), None, true)
        .await?
        .is_none()
    {
        return Err(BrokerSetupError::NoVhost {
            vhost: vhost.to_owned(),
        });
    }
    let mut users = Vec::new();
    for role in Role::ALL {
        let user = role.user(prefix);
        let u = percent_encode(&user);
        let grant = grant(role, prefix);
        let tags = grant.tags.join(",");
        let existing = api
            .expect(Method::GET, &format!("/users/{u}"), None, true)
            .await?;
        let (body, password, source) = match (passwords.given.get(&role), &existing) {
            (Some(given), _) => (
                json!({"password": given.expose(), "tags": tags}),
                Some(given.clone()),
                PasswordSource::Given,
            ),
            (None, Some(current)) => (
                json!({
                    "password_hash": current["password_hash"],
                    "hashing_algorithm": current["hashing_algorithm"],
                    "tags": tags,
                }),
                passwords.remembered.get(&role).cloned(),
                PasswordSource::Kept,
            ),
            (None, None) => {
                let (password, source) = match passwords.remembered.get(&role) {
                    Some(p) => (p.clone(), PasswordSource::Remembered),
                    None => (Password(generate_password()), PasswordSource::Generated),
                };
                (
                    json!({"password": password.expose(), "tags": tags}),
                    Some(password),
                    source,
                )
            }
        };
        api.expect(Method::PUT, &format!("/users/{u}"), Some(body), false)
            .await?;
        api.expect(
            Method::PUT,
            &format!("/permissions/{v}/{u}"),
            Some(json!({"configure": grant.configure, "write": grant.write, "read": grant.read})),
            false,
        )
        .await?;
        api.expect(
            Method::DELETE,
            &format!("/topic-permissions/{v}/{u}"),
            None,
            true,
        )
        .await?;
        api.expect(
            Method::PUT,
            &format!("/topic-permissions/{v}/{u}"),
            Some(json!({
                "exchange": grant.topic_exchange,
                "write": grant.topic_write,
                "read": grant.topic_read,
            })),
            false,
        )
        .await?;
        users.push(UserCredential {
            role,
            user,
            password,
            source,
        });
    }
    Ok(Credentials {
        prefix: prefix.to_owned(),
        vhost: vhost.to_owned(),
        users,
    })
}

/// Deletes the users `<prefix>-<role>`; returns how many existed.
pub async fn teardown(api: &AdminApi, prefix: &str) -> Result<usize, BrokerSetupError> {
    let mut deleted = 0;
    for role in Role::ALL {
        let path = format!("/users/{}", percent_encode(&role.user(prefix)));
        if api
            .expect(Method::DELETE, &path, None, true)
            .await?
            .is_some()
        {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// The administrator user a definitions file adds (a broker that loads definitions
/// creates no default user): `<prefix>-admin`.
pub fn admin_user(prefix: &str) -> String {
    format!("{prefix}-admin")
}

/// A RabbitMQ definitions document with the users of every role under `prefix` on
/// `vhost` (and an administrator `<prefix>-admin`), their [`grant`]s, and the given
/// password hashes (`hashes` by user name, [`HASHING_ALGORITHM`]).
pub fn definitions(
    prefix: &str,
    vhost: &str,
    hashes: &BTreeMap<String, String>,
) -> serde_json::Value {
    let hash = |user: &str| hashes.get(user).cloned().unwrap_or_default();
    let admin = admin_user(prefix);
    let mut users = vec![json!({
        "name": admin,
        "password_hash": hash(&admin),
        "hashing_algorithm": HASHING_ALGORITHM,
        "tags": ["administrator"],
        "limits": {},
    })];
    let mut permissions = vec![json!({
        "user": admin, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*",
    })];
    let mut topic_permissions = Vec::new();
    for role in Role::ALL {
        let user = role.user(prefix);
        let g = grant(role, prefix);
        users.push(json!({
            "name": user,
            "password_hash": hash(&user),
            "hashing_algorithm": HASHING_ALGORITHM,
            "tags": g.tags,
            "limits": {},
        }));
        permissions.push(json!({
            "user": user, "vhost": vhost,
            "configure": g.configure, "write": g.write, "read": g.read,
        }));
        topic_permissions.push(json!({
            "user": user, "vhost": vhost, "exchange": g.topic_exchange,
            "write": g.topic_write, "read": g.topic_read,
        }));
    }
    json!({
        "rabbit_version": "3.13.0",
        "users": users,
        "vhosts": [{"name": vhost}],
        "permissions": permissions,
        "topic_permissions": topic_permissions,
    })
}

/// Whether a broker error is RabbitMQ refusing the operation for lack of permission
/// (`ACCESS_REFUSED`, 403).
pub fn is_access_refused(error: &BrokerError) -> bool {
    match error {
        BrokerError::Channel(e) => lapin_access_refused(e),
        _ => false,
    }
}

/// [`is_access_refused`] for a lapin error.
pub fn lapin_access_refused(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
    )
}

/// `text` with everything but RFC 3986 unreserved characters %-encoded (for URL
/// user information and path segments: vhosts, user names).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

pub(super) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Declares the core topology unless it exists already. The orchestrator declares it; a
/// client-role user may not (declaring needs configure permission) and needs not, so
/// the client only checks that the request queue exists (a passive declare needs no
/// permission) and declares the topology only on a broker that has none yet.
/// Used by [`crate::client::Client::connect`].
pub async fn declare_core_if_missing(
    connection: &lapin::Connection,
    names: &baton_contract::Names,
) -> Result<(), BrokerError> {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;
    let check = connection.create_channel().await?;
    let exists = check
        .queue_declare(
            names.requests_queue().as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    if exists {
        let _ = check.close(200, "checked".into()).await;
        return Ok(());
    }
    let channel = connection.create_channel().await?;
    baton_amqp::declare_core(&channel, names).await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}
