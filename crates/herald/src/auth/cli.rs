//! `herald user`, `herald access` and `herald token`: ntfy's commands for the user
//! database, working on the same file as the server (and while it runs: SQLite in
//! WAL mode, and the server picks changes up on its next request).
//!
//! The file is the server's: `auth-file`, else `<data-dir>/auth.db`, with `data-dir`
//! and `auth-file` resolved as `herald serve` resolves them (flag, `HERALD_*`
//! environment, `--config` file, default). With `redis-url` (and `redis-key-prefix`)
//! configured the same way, the commands work on the cluster's users in Redis
//! instead ([`super::redis`]), from any machine that reaches it; every node applies
//! the change within [`super::redis::POLL_INTERVAL`]. Passwords come from `HERALD_PASSWORD`
//! (or ntfy's `NTFY_PASSWORD`, which ntfy documents for the same commands), else a
//! prompt on a terminal, else one line of standard input.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Arg, ArgAction, ArgMatches, Command};

use super::redis::RedisAuthStore;
use super::sqlite::SqliteAuthStore;
use super::store::{AuthStore, EVERYONE, TokenRecord, UserRecord};
use super::token::{self, TokenSelector};
use super::{Access, Role, acl, is_valid_user_name, password};
use crate::config;

/// Environment variables a password is read from, in order.
pub const PASSWORD_ENV: [&str; 2] = ["HERALD_PASSWORD", "NTFY_PASSWORD"];

fn location_args(cmd: Command) -> Command {
    cmd.arg(
        Arg::new("config")
            .long("config")
            .short('c')
            .value_name("FILE")
            .global(true)
            .help("The server's YAML config file (for `data-dir`, `auth-file`, `auth-default-access`) [env: HERALD_CONFIG]"),
    )
    .arg(
        Arg::new("data-dir")
            .long("data-dir")
            .value_name("DIR")
            .global(true)
            .help("The server's data directory; the auth file is `<data-dir>/auth.db` [env: HERALD_DATA_DIR]"),
    )
    .arg(
        Arg::new("auth-file")
            .long("auth-file")
            .value_name("FILE")
            .global(true)
            .help("The auth file itself (overrides `<data-dir>/auth.db`) [env: HERALD_AUTH_FILE]"),
    )
    .arg(
        Arg::new("redis-url")
            .long("redis-url")
            .value_name("URL")
            .global(true)
            .help("The cluster's Redis: manage its users, tokens and access instead of an auth file [env: HERALD_REDIS_URL]"),
    )
    .arg(
        Arg::new("redis-key-prefix")
            .long("redis-key-prefix")
            .value_name("PREFIX")
            .global(true)
            .help("The cluster's key prefix in Redis [env: HERALD_REDIS_KEY_PREFIX]"),
    )
}

/// Adds `user`, `access` and `token` to the `herald` command.
pub fn add_commands(cmd: Command) -> Command {
    let user_arg = || Arg::new("username").required(true).value_name("USERNAME");
    let user = Command::new("user")
        .about("Manage users (add, remove, list, change password or role) in the auth file, or the cluster's Redis with --redis-url")
        .subcommand_required(true)
        .subcommand(
            Command::new("add")
                .about("Add a user; the password is prompted for, or taken from HERALD_PASSWORD")
                .arg(
                    Arg::new("role")
                        .long("role")
                        .default_value("user")
                        .help("`user` or `admin`"),
                )
                .arg(user_arg()),
        )
        .subcommand(
            Command::new("del")
                .visible_aliases(["remove", "rm"])
                .about("Remove a user with their tokens and access entries")
                .arg(user_arg()),
        )
        .subcommand(
            Command::new("list")
                .visible_alias("l")
                .about("List users and their access"),
        )
        .subcommand(
            Command::new("change-pass")
                .visible_alias("chp")
                .about("Change a user's password")
                .arg(user_arg()),
        )
        .subcommand(
            Command::new("change-role")
                .visible_alias("chr")
                .about("Change a user's role (`user` or `admin`; admins lose their access entries)")
                .arg(user_arg())
                .arg(Arg::new("role").required(true).value_name("ROLE")),
        );
    let access = Command::new("access")
        .about("Show or change access control entries: `herald access USER TOPIC PERMISSION`")
        .long_about(
            "Show or change access control entries.\n\n\
             herald access                        show all entries\n\
             herald access USER                   show USER's entries\n\
             herald access USER TOPIC PERMISSION  allow USER (or `*`/`everyone`) PERMISSION on TOPIC\n\
             herald access --reset                remove all entries\n\
             herald access --reset USER [TOPIC]   remove USER's entries (or the one for TOPIC)\n\n\
             PERMISSION: read-write|rw, read-only|read|ro, write-only|write|wo, deny-all|deny|none.\n\
             TOPIC may contain `*` wildcards (`alerts*`).",
        )
        .arg(Arg::new("username").value_name("USERNAME"))
        .arg(Arg::new("topic").value_name("TOPIC"))
        .arg(Arg::new("permission").value_name("PERMISSION"))
        .arg(
            Arg::new("reset")
                .long("reset")
                .short('r')
                .action(ArgAction::SetTrue)
                .help("Remove entries instead of showing or adding them"),
        );
    let token = Command::new("token")
        .about("Manage access tokens (add, list, remove)")
        .subcommand_required(true)
        .subcommand(
            Command::new("add")
                .about("Create a token for a user and print it (shown only once)")
                .arg(
                    Arg::new("expires")
                        .long("expires")
                        .short('e')
                        .value_name("DURATION")
                        .help("When it expires: a duration (`30d`, `12h`), a unix time or a time such as `tomorrow 3pm`; default: never"),
                )
                .arg(
                    Arg::new("label")
                        .long("label")
                        .short('l')
                        .help("A label for the token"),
                )
                .arg(user_arg()),
        )
        .subcommand(
            Command::new("list")
                .visible_alias("l")
                .about("List tokens (of one user or of everyone)")
                .arg(Arg::new("username").value_name("USERNAME")),
        )
        .subcommand(
            Command::new("remove")
                .visible_aliases(["del", "rm"])
                .about("Remove a token (the whole token, or its listed `tk_xxxxxxxx...` form)")
                .arg(user_arg())
                .arg(Arg::new("token").required(true).value_name("TOKEN")),
        );
    cmd.subcommand(location_args(user))
        .subcommand(location_args(access))
        .subcommand(location_args(token))
}

/// Where the auth file is (or the cluster's Redis), and the configured default access.
struct Location {
    auth_file: PathBuf,
    /// `redis-url` and `redis-key-prefix` when configured: the store is Redis.
    redis: Option<(crate::cluster::connector::RedisSettings, String)>,
    /// `None` when this command's configuration does not turn access control on
    /// (the server may have been given `auth-default-access` as a flag).
    default_access: Option<Access>,
}

/// Resolves `data-dir`/`auth-file` exactly as `herald serve` does, by running the
/// server's option table over the flags given here (clap adds the `HERALD_*`
/// environment).
fn locate(m: &ArgMatches) -> anyhow::Result<Location> {
    let mut argv = vec!["herald".to_string()];
    for key in [
        "config",
        "data-dir",
        "auth-file",
        "redis-url",
        "redis-key-prefix",
    ] {
        if let Some(v) = m.get_one::<String>(key) {
            argv.push(format!("--{key}"));
            argv.push(v.clone());
        }
    }
    let matches = config::add_args(Command::new("herald"))
        .try_get_matches_from(argv)
        .context("invalid arguments")?;
    let cfg = config::load(&matches).context("invalid configuration")?;
    // Sentinel and TLS settings too, from the environment or `--config`.
    let redis = cfg
        .redis
        .enabled()
        .then(|| (cfg.redis.clone(), cfg.redis_key_prefix.clone()));
    Ok(match cfg.auth {
        Some(a) => Location {
            auth_file: a.auth_file,
            redis,
            default_access: Some(a.default_access),
        },
        None => Location {
            auth_file: cfg.data_dir.join("auth.db"),
            redis,
            default_access: None,
        },
    })
}

/// The cluster's Redis with `redis-url` (as the server uses it), else the auth file.
fn open(loc: &Location) -> anyhow::Result<Box<dyn AuthStore>> {
    match &loc.redis {
        Some((settings, prefix)) => Ok(Box::new(
            RedisAuthStore::open(
                &crate::cluster::connector::RedisConnector::new(settings)?,
                prefix,
            )
            .context("cannot reach the auth store in Redis (redis-url)")?,
        )),
        None => Ok(Box::new(
            SqliteAuthStore::open(&loc.auth_file)
                .with_context(|| format!("cannot open auth file {}", loc.auth_file.display()))?,
        )),
    }
}

/// Runs `herald user|access|token`.
/// Provisioned users (`auth-users`) belong to the configuration (ntfy's 40905).
fn refuse_provisioned(store: &dyn AuthStore, name: &str) -> anyhow::Result<()> {
    if super::provision::is_provisioned_user(store, name)? {
        bail!("user {name} is provisioned (auth-users): change the configuration instead");
    }
    Ok(())
}

pub fn run(command: &str, m: &ArgMatches) -> anyhow::Result<()> {
    let loc = locate(m)?;
    let store = open(&loc)?;
    let mut out = std::io::stdout().lock();
    match command {
        "user" => user(&*store, &loc, m, &mut out),
        "access" => access(&*store, &loc, m, &mut out),
        "token" => token_cmd(&*store, m, &mut out),
        other => bail!("unknown command {other}"),
    }
}

fn username(m: &ArgMatches) -> &str {
    m.get_one::<String>("username").map_or("", String::as_str)
}

fn parse_role(s: &str) -> anyhow::Result<Role> {
    Role::parse(s).with_context(|| format!("invalid role {s:?}: expected `user` or `admin`"))
}

fn user(
    store: &dyn AuthStore,
    loc: &Location,
    m: &ArgMatches,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match m.subcommand() {
        Some(("add", m)) => {
            let name = username(m);
            let role = parse_role(m.get_one::<String>("role").map_or("user", String::as_str))?;
            if name == EVERYONE || name == "everyone" || !is_valid_user_name(name) {
                bail!("invalid user name {name:?}: use letters, digits and -_.+@ (at most 64)");
            }
            if store.user(name)?.is_some() {
                bail!("user {name} already exists");
            }
            let hash = password::hash(&read_password(true)?)?;
            store.add_user(&UserRecord {
                name: name.to_string(),
                hash,
                role,
            })?;
            writeln!(out, "user {name} added with role {}", role.as_str())?;
        }
        Some(("del", m)) => {
            let name = username(m);
            refuse_provisioned(store, name)?;
            store.remove_user(name)?;
            writeln!(out, "user {name} removed")?;
        }
        Some(("change-pass", m)) => {
            let name = username(m);
            if store.user(name)?.is_none() {
                bail!("user {name} does not exist");
            }
            refuse_provisioned(store, name)?;
            let hash = password::hash(&read_password(true)?)?;
            store.set_password_hash(name, &hash)?;
            writeln!(out, "changed password for user {name}")?;
        }
        Some(("change-role", m)) => {
            let name = username(m);
            let role = parse_role(m.get_one::<String>("role").map_or("", String::as_str))?;
            refuse_provisioned(store, name)?;
            store.set_role(name, role)?;
            writeln!(out, "changed role for user {name} to {}", role.as_str())?;
        }
        Some(("list", _)) => show_access(store, loc, None, out)?,
        _ => bail!("missing subcommand: add, del, list, change-pass or change-role"),
    }
    Ok(())
}

fn access(
    store: &dyn AuthStore,
    loc: &Location,
    m: &ArgMatches,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let name = m.get_one::<String>("username").map(|u| {
        if u == "everyone" {
            EVERYONE.to_string()
        } else {
            u.clone()
        }
    });
    let topic = m.get_one::<String>("topic");
    let permission = m.get_one::<String>("permission");
    if m.get_flag("reset") {
        if permission.is_some() {
            bail!("--reset takes at most a user and a topic");
        }
        if let Some(n) = &name
            && n != EVERYONE
            && store.user(n)?.is_none()
        {
            bail!("user {n} does not exist");
        }
        store.reset_access(name.as_deref(), topic.map(String::as_str))?;
        match (&name, topic) {
            (None, _) => writeln!(out, "reset access for all users")?,
            (Some(n), None) => writeln!(out, "reset access for user {n}")?,
            (Some(n), Some(t)) => writeln!(out, "reset access for user {n} and topic {t}")?,
        }
        return Ok(());
    }
    match (name, topic, permission) {
        (None, _, _) => show_access(store, loc, None, out),
        (Some(n), None, _) => show_access(store, loc, Some(&n), out),
        (Some(_), Some(_), None) => {
            bail!("missing permission: herald access USER TOPIC PERMISSION")
        }
        (Some(n), Some(t), Some(p)) => {
            let access = Access::parse(p).with_context(|| {
                format!("invalid permission {p:?}: expected read-write, read-only, write-only or deny-all")
            })?;
            if !acl::is_valid_pattern(t) {
                bail!(
                    "invalid topic pattern {t:?}: letters, digits, - and _ with optional * wildcards (at most 64)"
                );
            }
            if n != EVERYONE {
                match store.user(&n)? {
                    None => bail!("user {n} does not exist"),
                    Some(u) if u.role == Role::Admin => {
                        bail!("user {n} is an admin: admins may read and write every topic")
                    }
                    Some(_) => {}
                }
            }
            store.set_access(&n, t, access)?;
            let what = match access {
                Access::DENY_ALL => "denied access to".to_string(),
                a => format!("granted {} access to", a.as_str()),
            };
            writeln!(out, "{what} topic {t} for user {n}")?;
            show_access(store, loc, Some(&n), out)
        }
    }
}

/// Lists users (or one) with role and entries, ntfy's `ntfy access` format.
fn show_access(
    store: &dyn AuthStore,
    loc: &Location,
    only: Option<&str>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let data = store.load()?;
    let mut users: Vec<&UserRecord> = data
        .users
        .iter()
        .filter(|u| only.is_none_or(|o| o == u.name))
        .collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(o) = only
        && o != EVERYONE
        && users.is_empty()
    {
        bail!("user {o} does not exist");
    }
    let entries = |name: &str| {
        let mut g: Vec<&acl::Grant> = data
            .grants
            .iter()
            .filter(|g| g.user == name)
            .map(|g| &g.grant)
            .collect();
        g.sort_by(|a, b| a.pattern.cmp(&b.pattern));
        g
    };
    let describe = |a: Access| match a {
        Access::DENY_ALL => "no access".to_string(),
        a => format!("{} access", a.as_str()),
    };
    for u in users {
        writeln!(out, "user {} (role: {})", u.name, u.role.as_str())?;
        if u.role == Role::Admin {
            writeln!(out, "- read-write access to all topics (admin role)")?;
            continue;
        }
        let grants = entries(&u.name);
        if grants.is_empty() {
            writeln!(out, "- no topic-specific permissions")?;
        }
        for g in grants {
            writeln!(out, "- {} to topic {}", describe(g.access), g.pattern)?;
        }
    }
    if only.is_none_or(|o| o == EVERYONE) {
        writeln!(out, "user * (role: anonymous)")?;
        for g in entries(EVERYONE) {
            writeln!(out, "- {} to topic {}", describe(g.access), g.pattern)?;
        }
        match loc.default_access {
            Some(a) => writeln!(
                out,
                "- {} to all (other) topics (auth-default-access)",
                describe(a)
            )?,
            None => writeln!(
                out,
                "- the server's auth-default-access to all (other) topics (not set for this command)"
            )?,
        }
    }
    Ok(())
}

fn token_cmd(store: &dyn AuthStore, m: &ArgMatches, out: &mut impl Write) -> anyhow::Result<()> {
    match m.subcommand() {
        Some(("add", m)) => {
            let name = username(m);
            if store.user(name)?.is_none() {
                bail!("user {name} does not exist");
            }
            let now = crate::model::now_unix();
            // As ntfy's `--expires`: a duration, a unix time or a phrase such as
            // `tomorrow 3pm` (ntfy's ParseFutureTime); none (or `never`): no expiry.
            let expires = match m.get_one::<String>("expires").map(|s| s.trim()) {
                None | Some("" | "never" | "0") => 0,
                Some(s) => crate::time::parse_future_time(s, now).map_err(|_| {
                    anyhow::anyhow!(
                        "invalid --expires {s:?}: expected a duration (30d, 12h), a unix time or a time such as \"tomorrow 3pm\""
                    )
                })?,
            };
            if !token::expiry_is_valid(expires) {
                bail!(
                    "invalid --expires: the token would expire before 1970 or after the year 9999"
                );
            }
            let value = token::generate().context("no randomness for the token")?;
            store.add_token(
                &TokenRecord {
                    digest: token::digest(&value),
                    user: name.to_string(),
                    shown: token::shown_part(&value).to_string(),
                    label: m.get_one::<String>("label").cloned().unwrap_or_default(),
                    expires,
                    last_access: 0,
                    last_origin: String::new(),
                    created: now,
                },
                token::MAX_PER_USER,
            )?;
            writeln!(
                out,
                "token {value} created for user {name}, {}",
                expiry_text(expires)
            )?;
        }
        Some(("list", m)) => {
            let names: Vec<String> = match m.get_one::<String>("username") {
                Some(n) => {
                    if store.user(n)?.is_none() {
                        bail!("user {n} does not exist");
                    }
                    vec![n.clone()]
                }
                None => {
                    let mut v: Vec<String> =
                        store.load()?.users.into_iter().map(|u| u.name).collect();
                    v.sort();
                    v
                }
            };
            for n in names {
                let tokens = store.tokens(&n)?;
                if tokens.is_empty() {
                    writeln!(out, "user {n} has no access tokens")?;
                    continue;
                }
                writeln!(out, "user {n}")?;
                for t in tokens {
                    let label = if t.label.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", t.label)
                    };
                    let used = if t.last_access > 0 {
                        format!(
                            ", last access {} from {}",
                            time_text(t.last_access),
                            if t.last_origin.is_empty() {
                                "?"
                            } else {
                                &t.last_origin
                            }
                        )
                    } else {
                        String::new()
                    };
                    let state = if t.expired(crate::model::now_unix()) {
                        "expired"
                    } else {
                        "active"
                    };
                    writeln!(
                        out,
                        "- {}...{label}, {}, {state}{used}",
                        t.shown,
                        expiry_text(t.expires)
                    )?;
                }
            }
        }
        Some(("remove", m)) => {
            let name = username(m);
            let raw = m.get_one::<String>("token").map_or("", String::as_str);
            let selector = TokenSelector::parse(raw).with_context(|| {
                format!("{raw:?} is not a token (tk_...) or a listed token prefix")
            })?;
            let found = store.find_token(name, &selector)?;
            if super::provision::is_provisioned_token(store, name, &found.digest)? {
                bail!(
                    "token {} of {name} is provisioned (auth-tokens): change the configuration instead",
                    found.shown
                );
            }
            store.remove_token(name, &selector)?;
            writeln!(
                out,
                "token {} removed for user {name}",
                token::display(raw.trim_end_matches("..."))
            )?;
        }
        _ => bail!("missing subcommand: add, list or remove"),
    }
    Ok(())
}

fn time_text(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| unix.to_string())
}

fn expiry_text(expires: i64) -> String {
    if expires == 0 {
        "never expires".to_string()
    } else {
        format!("expires {}", time_text(expires))
    }
}

/// The password: from the environment, a terminal prompt (asked twice when
/// `confirm`), or one line of standard input.
fn read_password(confirm: bool) -> anyhow::Result<String> {
    for var in PASSWORD_ENV {
        if let Ok(p) = std::env::var(var)
            && !p.is_empty()
        {
            return Ok(p);
        }
    }
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("password: ").context("cannot read the password")?;
        if confirm {
            let second =
                rpassword::prompt_password("confirm: ").context("cannot read the password")?;
            if first != second {
                bail!("passwords do not match: try again");
            }
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        bail!("password must not be empty");
    }
    Ok(password)
}
