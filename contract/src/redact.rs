//! Secrets out of URLs: what every binary logs instead of a database or broker URL.

/// `amqp://guest:***@host/…`: the URL without its password, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user information ends at the last `@` (a password may contain `/`, `?` or
    // `@`); without an `@` there is no password to hide.
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host_and_path) = (&rest[..at], &rest[at + 1..]);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host_and_path}"),
        None => format!("{scheme}://{userinfo}@{host_and_path}"),
    }
}

/// Where a database URL points, for start-up lines and wiring errors: for `sqlite:` the
/// file's absolute path (relative paths resolve against the working directory, which is
/// what the operator must see when two processes run in different ones); for anything
/// else the URL without its password.
pub fn database_location(url: &str) -> String {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return redact_url(url);
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path.starts_with(':') {
        return url.split('?').next().unwrap_or(url).to_owned();
    }
    let path = std::path::Path::new(path);
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map(|dir| dir.join(path))
            .unwrap_or_else(|_| path.to_owned())
    };
    // Resolves `..` and symbolic links once the file exists (it does after an open).
    std::fs::canonicalize(&absolute)
        .unwrap_or(absolute)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(
            redact_url("amqp://guest:s3cret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("amqp://u:p@ss@host"),
            "amqp://u:***@host",
            "an @ inside the password is still hidden"
        );
        assert_eq!(redact_url("amqp://host:5672/vh"), "amqp://host:5672/vh");
        assert_eq!(
            redact_url("amqp://svc:ab/cd+ef==@broker:5672/%2f"),
            "amqp://svc:***@broker:5672/%2f",
            "a base64 password with a slash"
        );
        assert_eq!(
            redact_url("postgres://u:p?x@db/baton"),
            "postgres://u:***@db/baton"
        );
        assert_eq!(redact_url("amqp://user@host/"), "amqp://user@host/");
    }

    #[test]
    fn database_locations_are_absolute_paths_or_redacted_urls() {
        let cwd = std::env::current_dir().unwrap();
        let relative = database_location("sqlite://no-such-dir-xyz/ledger.db?mode=rwc");
        assert_eq!(
            relative,
            cwd.join("no-such-dir-xyz/ledger.db").display().to_string()
        );
        assert_eq!(
            database_location("sqlite:///var/lib/baton/j.db"),
            "/var/lib/baton/j.db"
        );
        assert_eq!(database_location("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(
            database_location("postgres://baton:hunter2@db:5432/ledger"),
            "postgres://baton:***@db:5432/ledger"
        );
    }
}
