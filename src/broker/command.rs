//! `baton broker setup|teardown|definitions`.

use super::*;
use baton_amqp::redact_url;
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `baton broker …`.
#[derive(Debug, Subcommand)]
pub enum BrokerCommand {
    /// Create or update the users <prefix>-<role> with least-privilege permissions on a
    /// running broker (through its management API); passwords go to a 0600 file
    Setup(SetupArgs),
    /// Delete the users <prefix>-<role>
    Teardown(AdminArgs),
    /// Print a RabbitMQ definitions file (users with password hashes, permissions) for
    /// brokers that load one at boot; passwords as for setup, written to a 0600 file
    Definitions(DefinitionsArgs),
    /// Read a password on stdin and print its RabbitMQ password hash (sha256)
    HashPassword,
}

/// How to reach the management API.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Management API URL of an administrator, http://user:password@host:15672[/vhost]
    /// [default: http://guest:***@127.0.0.1:15672]
    #[arg(
        long,
        env = "BATON_ADMIN_URL",
        default_value = DEFAULT_ADMIN_URL,
        hide_default_value = true,
        hide_env_values = true
    )]
    pub admin_url: String,
}

/// Options of `baton broker setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub admin: AdminArgs,
    /// Virtual host of the permissions [default: the admin URL's path, else /]
    #[arg(long, env = "BATON_VHOST", hide_env_values = true)]
    pub vhost: Option<String>,
    /// Where to write the passwords and URLs [default: ./<prefix>-credentials.env]
    #[arg(long)]
    pub credentials_file: Option<PathBuf>,
    /// host:port the AMQP URLs in the credentials file point at [default: <admin URL's host>:5672]
    #[arg(long)]
    pub amqp_address: Option<String>,
}

/// Options of `baton broker definitions`.
#[derive(Debug, Args)]
pub struct DefinitionsArgs {
    /// Virtual host of the permissions
    #[arg(long, default_value = "/")]
    pub vhost: String,
    /// Where to write the passwords and URLs [default: ./<prefix>-credentials.env]
    #[arg(long)]
    pub credentials_file: Option<PathBuf>,
    /// host:port the AMQP URLs in the credentials file point at
    #[arg(long, default_value = "rabbitmq:5672")]
    pub amqp_address: String,
}

/// Runs `baton broker …` for `prefix`; returns the exit code (2: management API
/// unreachable).
pub async fn run(prefix: &str, command: BrokerCommand) -> anyhow::Result<i32> {
    let outcome = match command {
        BrokerCommand::Setup(args) => run_setup(prefix, args).await,
        BrokerCommand::Teardown(args) => run_teardown(prefix, args).await,
        BrokerCommand::Definitions(args) => run_definitions(prefix, args),
        BrokerCommand::HashPassword => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                anyhow::bail!(
                    "no password on stdin: `printf %s \"$PASSWORD\" | baton broker hash-password`"
                );
            }
            println!("{}", hash_password(password));
            Ok(0)
        }
    };
    match outcome {
        Err(e) if matches!(e.downcast_ref(), Some(BrokerSetupError::Unreachable { .. })) => {
            eprintln!("error: {e:#}");
            Ok(baton_ops::EXIT_BROKER_UNREACHABLE)
        }
        other => other,
    }
}

pub(super) async fn run_setup(prefix: &str, args: SetupArgs) -> anyhow::Result<i32> {
    let api = AdminApi::from_url(&args.admin.admin_url)?;
    let vhost = args
        .vhost
        .or_else(|| api.vhost().map(str::to_owned))
        .unwrap_or_else(|| "/".into());
    let file = args
        .credentials_file
        .unwrap_or_else(|| PathBuf::from(format!("{prefix}-credentials.env")));
    let mut passwords = Passwords::from_env()?;
    passwords.remember_file(&file);
    let credentials = setup(&api, prefix, &vhost, &passwords).await?;
    let amqp_address = args
        .amqp_address
        .unwrap_or_else(|| format!("{}:5672", api.host()));
    write_credentials(&file, &credentials.env_file(&amqp_address, &api.address()))?;
    println!(
        "{} users for prefix {prefix} on vhost {vhost} at {}:",
        credentials.users.len(),
        redact_url(&args.admin.admin_url)
    );
    for u in &credentials.users {
        let source = match u.source {
            PasswordSource::Given => format!("password from {}", u.role.password_var()),
            PasswordSource::Remembered => "password from the credentials file".into(),
            PasswordSource::Generated => "password generated".into(),
            PasswordSource::Kept => "existing password kept".into(),
        };
        println!("  {:<28} {source}", u.user);
    }
    println!("passwords and URLs: {} (mode 0600)", file.display());
    Ok(0)
}

pub(super) async fn run_teardown(prefix: &str, args: AdminArgs) -> anyhow::Result<i32> {
    let api = AdminApi::from_url(&args.admin_url)?;
    let deleted = teardown(&api, prefix).await?;
    println!(
        "deleted {deleted} users of prefix {prefix} at {}",
        redact_url(&args.admin_url)
    );
    Ok(0)
}

pub(super) fn run_definitions(prefix: &str, args: DefinitionsArgs) -> anyhow::Result<i32> {
    let file = args
        .credentials_file
        .unwrap_or_else(|| PathBuf::from(format!("{prefix}-credentials.env")));
    let mut passwords = Passwords::from_env()?;
    passwords.remember_file(&file);
    let admin_password = std::env::var("BATON_PASSWORD_ADMIN")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(generate_password);
    let mut hashes = BTreeMap::new();
    hashes.insert(admin_user(prefix), hash_password(&admin_password));
    let mut users = Vec::new();
    for role in Role::ALL {
        let (password, source) = match (passwords.given.get(&role), passwords.remembered.get(&role))
        {
            (Some(p), _) => (p.clone(), PasswordSource::Given),
            (None, Some(p)) => (p.clone(), PasswordSource::Remembered),
            (None, None) => (Password(generate_password()), PasswordSource::Generated),
        };
        hashes.insert(role.user(prefix), hash_password(password.expose()));
        users.push(UserCredential {
            role,
            user: role.user(prefix),
            password: Some(password),
            source,
        });
    }
    let credentials = Credentials {
        prefix: prefix.to_owned(),
        vhost: args.vhost.clone(),
        users,
    };
    let api_host = args
        .amqp_address
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(&args.amqp_address);
    let mut env = credentials.env_file(&args.amqp_address, &format!("{api_host}:15672"));
    env.push_str(&format!("BATON_PASSWORD_ADMIN={admin_password}\n"));
    write_credentials(&file, &env)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&definitions(prefix, &args.vhost, &hashes))?
    );
    eprintln!("passwords and URLs: {} (mode 0600)", file.display());
    Ok(0)
}

/// Writes `text` to `path`, readable by its owner only.
pub(super) fn write_credentials(path: &Path, text: &str) -> Result<(), BrokerSetupError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let failed = |cause| BrokerSetupError::CredentialsFile {
        path: path.to_owned(),
        cause,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).map_err(failed)?;
    // An existing file keeps its mode on open: tighten it before writing.
    #[cfg(unix)]
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    Ok(())
}
