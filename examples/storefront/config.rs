//! The storefront's settings: flags, each with an environment variable, and one-line errors
//! that name both.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// How the storefront learns which tenant calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Auth {
    /// The tenant that owns the API key in `x-api-key` (the default).
    ApiKey,
    /// `x-tenant-id` alone, believed as sent: for trusted internal callers only.
    HeaderOnly,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Human-readable lines (the default).
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Everything the storefront is started with.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) addr: SocketAddr,
    pub(crate) data: PathBuf,
    /// Whether `--data` or `TP_DATA` named the directory (the demo uses a temporary one
    /// otherwise).
    pub(crate) data_given: bool,
    /// Run the scripted tour against itself, print its report, and exit.
    pub(crate) demo: bool,
    pub(crate) tenants: Option<PathBuf>,
    pub(crate) auth: Auth,
    /// The admin routes' token; `None` makes a random one at start, printed once.
    pub(crate) admin_token: Option<String>,
    /// The secret that signs customers' bearer tokens (HS256); `None` makes a random one at
    /// start, so tokens last one run.
    pub(crate) jwt_secret: Option<String>,
    pub(crate) log: LogFormat,
    /// How long a client may take to send a request's headers (HTTP/1).
    pub(crate) header_timeout: Duration,
    /// How long a request may take, end to end, before it is answered 504.
    pub(crate) request_timeout: Duration,
    /// Requests in flight across the whole server before the next is shed with 503.
    pub(crate) max_inflight: u32,
    /// How long shutdown waits for requests in flight.
    pub(crate) drain: Duration,
    /// Redis to count the rate limits in, shared by several storefronts.
    pub(crate) redis: Option<String>,
    /// NATS (with JetStream) to publish the order events to.
    pub(crate) nats: Option<String>,
    /// PostgreSQL to keep the events and the saga index in.
    pub(crate) postgres: Option<String>,
    /// Streaming replicas of `postgres`, watched for lag (empty without `--postgres-replicas`).
    pub(crate) postgres_replicas: Vec<String>,
    /// How many order shards (stores) there are.
    pub(crate) shards: usize,
    /// The payment client's settings (shorter in the demo).
    pub(crate) payments: crate::payments::PaymentSettings,
}

/// The flags, for `--help` and for errors.
pub(crate) const USAGE: &str = "\
usage: storefront [flags]
  --addr ADDR              listen address (TP_ADDR; default 127.0.0.1:3000)
  --data DIR               data directory, kept across restarts (TP_DATA; default
                           $XDG_DATA_HOME/tower-patterns/storefront, else
                           ~/.local/share/tower-patterns/storefront, else ./storefront-data)
  --tenants FILE           tenant registry, TOML (TP_TENANTS; default: the demo tenants)
  --tenant-header-only     believe x-tenant-id as sent, for callers a gateway authenticated
                           (TP_TENANT_HEADER_ONLY=1)
  --admin-token TOKEN      token of the /admin and /metrics routes (TP_ADMIN_TOKEN; default:
                           a random one, printed at start)
  --jwt-secret SECRET      HS256 secret of the customers' bearer tokens, 32 bytes or more
                           (TP_JWT_SECRET; default: a random one per start)
  --log-json               logs as JSON lines (TP_LOG_FORMAT=json; RUST_LOG filters, default info)
  --header-timeout SECS    time to send a request's headers (TP_HEADER_TIMEOUT; default 10)
  --request-timeout SECS   time to answer a request, then 504 (TP_REQUEST_TIMEOUT; default 10)
  --redis URL              count the tenants' rate limits in Redis (redis://host:port), shared
                           by every storefront that uses it; with --postgres, share the
                           catalog cache there too (TP_STOREFRONT_REDIS)
  --postgres URL           keep the events (orders, products, sagas) and the saga index in
                           PostgreSQL (postgres://...), a schema per store, shared by every
                           storefront that uses it (TP_STOREFRONT_POSTGRES)
  --postgres-replicas URLS streaming replicas of --postgres, comma-separated postgres:// URLs
                           (one host each): /admin/patterns and the status page show how far
                           behind each one is (TP_STOREFRONT_POSTGRES_REPLICAS)
  --nats URL               publish every order event to NATS JetStream (nats://host:port),
                           stream STOREFRONT_ORDERS, subjects storefront.orders.<shard>.<event>
                           (TP_STOREFRONT_NATS)
  --shards N               order stores, customers placed by jump hash (TP_SHARDS; default
                           4; fixed once the data directory holds orders)
  --max-inflight N         requests in flight before 503 (TP_MAX_INFLIGHT; default 256)
  --drain SECS             time shutdown waits for requests in flight (TP_DRAIN; default 10)
  --demo                   a scripted tour against itself: every pattern at work, then a
                           report; exits 0 only if every expectation held
  -h, --help               this text";

/// Where the data lives when neither `--data` nor `TP_DATA` says.
pub(crate) fn default_data_dir(env: &impl Fn(&str) -> Option<String>) -> PathBuf {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("XDG_DATA_HOME")
        .or_else(|| set("HOME").map(|home| home.join(".local/share")))
        .map_or_else(
            || PathBuf::from("storefront-data"),
            |base| base.join("tower-patterns").join("storefront"),
        )
}

/// `url` from its host on: without `user:password@`. Every error that names a server URL
/// (`--postgres`, `--redis`, `--nats`) shows it so.
pub(crate) fn after_userinfo(url: &str) -> &str {
    url.rsplit('@').next().unwrap_or(url)
}

/// Whether `value` is a PostgreSQL connection URL.
fn is_postgres_url(value: &str) -> bool {
    value.starts_with("postgres://") || value.starts_with("postgresql://")
}

/// One setting: its flag, its variable, and the value the command line or else the
/// environment gave.
struct Setting<'a> {
    flag: &'static str,
    var: &'static str,
    value: Option<&'a str>,
}

impl Setting<'_> {
    fn error(&self, value: &str, what: &str) -> String {
        format!(
            "storefront: {} {value:?}: {what} (also {})",
            self.flag, self.var
        )
    }

    fn seconds(&self, default: u64, max: u64) -> Result<Duration, String> {
        let Some(value) = self.value else {
            return Ok(Duration::from_secs(default));
        };
        match value.trim().parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(Duration::from_secs(n)),
            _ => Err(self.error(
                value,
                &format!("not a whole number of seconds from 1 to {max}"),
            )),
        }
    }
}

/// Reads the command line (without the program name), then the environment for what it leaves
/// out. Errors are one line naming the flag and its variable.
pub(crate) fn parse(
    args: Vec<String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, String> {
    let mut flags: Vec<(&'static str, String)> = Vec::new();
    let mut switches: Vec<&'static str> = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg.clone(), None),
        };
        let flag: &'static str = match name.as_str() {
            "-h" | "--help" => return Err(USAGE.to_owned()),
            "--tenant-header-only" => {
                switches.push("--tenant-header-only");
                continue;
            }
            "--log-json" => {
                switches.push("--log-json");
                continue;
            }
            "--demo" => {
                switches.push("--demo");
                continue;
            }
            "--addr" => "--addr",
            "--data" => "--data",
            "--tenants" => "--tenants",
            "--admin-token" => "--admin-token",
            "--jwt-secret" => "--jwt-secret",
            "--header-timeout" => "--header-timeout",
            "--request-timeout" => "--request-timeout",
            "--max-inflight" => "--max-inflight",
            "--shards" => "--shards",
            "--redis" => "--redis",
            "--nats" => "--nats",
            "--postgres" => "--postgres",
            "--postgres-replicas" => "--postgres-replicas",
            "--drain" => "--drain",
            _ => return Err(format!("storefront: unknown argument {arg:?} (try --help)")),
        };
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .ok_or_else(|| format!("storefront: {flag} needs a value (try --help)"))?,
        };
        flags.retain(|(f, _)| *f != flag);
        flags.push((flag, value));
    }
    let from_env: Vec<(&'static str, Option<String>)> = [
        "TP_ADDR",
        "TP_DATA",
        "TP_TENANTS",
        "TP_ADMIN_TOKEN",
        "TP_JWT_SECRET",
        "TP_HEADER_TIMEOUT",
        "TP_REQUEST_TIMEOUT",
        "TP_MAX_INFLIGHT",
        "TP_SHARDS",
        "TP_STOREFRONT_REDIS",
        "TP_STOREFRONT_NATS",
        "TP_STOREFRONT_POSTGRES",
        "TP_STOREFRONT_POSTGRES_REPLICAS",
        "TP_DRAIN",
        "TP_TENANT_HEADER_ONLY",
        "TP_LOG_FORMAT",
    ]
    .into_iter()
    .map(|var| (var, env(var)))
    .collect();
    let var = |name: &str| {
        from_env
            .iter()
            .find(|(v, _)| *v == name)
            .and_then(|(_, value)| value.as_deref())
    };
    let setting = |flag: &'static str, var_name: &'static str| Setting {
        flag,
        var: var_name,
        value: flags
            .iter()
            .find(|(f, _)| *f == flag)
            .map(|(_, v)| v.as_str())
            .or_else(|| var(var_name)),
    };

    let addr = setting("--addr", "TP_ADDR");
    let addr = match addr.value {
        None => SocketAddr::from(([127, 0, 0, 1], 3000)),
        Some(value) => value
            .trim()
            .parse()
            .map_err(|_| addr.error(value, "not a socket address such as 127.0.0.1:3000"))?,
    };
    let data = setting("--data", "TP_DATA");
    let data_given = data.value.is_some();
    let data = match data.value {
        Some("") => return Err(data.error("", "an empty path")),
        Some(value) => PathBuf::from(value),
        None => default_data_dir(&env),
    };
    let tenants = setting("--tenants", "TP_TENANTS").value.map(PathBuf::from);
    let auth = if switches.contains(&"--tenant-header-only") {
        Auth::HeaderOnly
    } else {
        match var("TP_TENANT_HEADER_ONLY").map(str::trim) {
            None | Some("" | "0" | "false") => Auth::ApiKey,
            Some("1" | "true") => Auth::HeaderOnly,
            Some(other) => {
                return Err(format!(
                    "storefront: TP_TENANT_HEADER_ONLY {other:?}: must be 1, true, 0, false or \
                     unset (also --tenant-header-only)"
                ));
            }
        }
    };
    let token = setting("--admin-token", "TP_ADMIN_TOKEN");
    let admin_token = match token.value {
        None => None,
        Some(value) if value.len() >= 16 && value.bytes().all(|b| b.is_ascii_graphic()) => {
            Some(value.to_owned())
        }
        Some(value) => {
            return Err(token.error(
                &"*".repeat(value.len().min(8)),
                "must be at least 16 visible ASCII characters",
            ));
        }
    };
    let secret = setting("--jwt-secret", "TP_JWT_SECRET");
    let jwt_secret = match secret.value {
        None => None,
        Some(value) if value.len() >= 32 => Some(value.to_owned()),
        Some(value) => {
            return Err(secret.error(&"*".repeat(value.len().min(8)), "must be at least 32 bytes"));
        }
    };
    let log = if switches.contains(&"--log-json") {
        LogFormat::Json
    } else {
        match var("TP_LOG_FORMAT").map(str::trim) {
            None | Some("" | "pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(format!(
                    "storefront: TP_LOG_FORMAT {other:?}: must be pretty or json (also --log-json)"
                ));
            }
        }
    };
    let max_inflight = setting("--max-inflight", "TP_MAX_INFLIGHT");
    let max_inflight = match max_inflight.value {
        None => 256,
        Some(value) => match value.trim().parse::<u32>() {
            Ok(n) if (1..=100_000).contains(&n) => n,
            _ => return Err(max_inflight.error(value, "not a number from 1 to 100000")),
        },
    };
    let redis = setting("--redis", "TP_STOREFRONT_REDIS");
    let redis = match redis.value {
        None => None,
        Some(value) if value.starts_with("redis://") || value.starts_with("rediss://") => {
            Some(value.to_owned())
        }
        Some(value) => return Err(redis.error(after_userinfo(value), "not a redis:// URL")),
    };
    let nats = setting("--nats", "TP_STOREFRONT_NATS");
    let nats = match nats.value {
        None => None,
        Some(value) if value.starts_with("nats://") || value.starts_with("tls://") => {
            Some(value.to_owned())
        }
        Some(value) => return Err(nats.error(after_userinfo(value), "not a nats:// URL")),
    };
    let postgres = setting("--postgres", "TP_STOREFRONT_POSTGRES");
    let postgres = match postgres.value {
        None => None,
        Some(value) if is_postgres_url(value) => Some(value.to_owned()),
        // Echoed from its host on: what comes before `@` may hold a password.
        Some(value) => return Err(postgres.error(after_userinfo(value), "not a postgres:// URL")),
    };
    let replicas = setting("--postgres-replicas", "TP_STOREFRONT_POSTGRES_REPLICAS");
    let postgres_replicas = match replicas.value {
        None => Vec::new(),
        // Not echoed: the URLs may hold a password.
        Some(_) if postgres.is_none() => {
            return Err(
                "storefront: --postgres-replicas needs --postgres, the primary they follow \
                 (also TP_STOREFRONT_POSTGRES_REPLICAS)"
                    .to_owned(),
            );
        }
        Some(value) => {
            let urls: Vec<String> = value.split(',').map(|u| u.trim().to_owned()).collect();
            if let Some(n) = urls.iter().position(|u| !is_postgres_url(u)) {
                return Err(format!(
                    "storefront: --postgres-replicas: URL {} of {} is not a postgres:// URL \
                     (also TP_STOREFRONT_POSTGRES_REPLICAS)",
                    n + 1,
                    urls.len()
                ));
            }
            urls
        }
    };
    let shards = setting("--shards", "TP_SHARDS");
    let shards = match shards.value {
        None => 4,
        Some(value) => match value.trim().parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) => n,
            _ => return Err(shards.error(value, "not a number from 1 to 64")),
        },
    };
    Ok(Config {
        addr,
        data,
        data_given,
        demo: switches.contains(&"--demo"),
        tenants,
        auth,
        admin_token,
        jwt_secret,
        log,
        header_timeout: setting("--header-timeout", "TP_HEADER_TIMEOUT").seconds(10, 3600)?,
        request_timeout: setting("--request-timeout", "TP_REQUEST_TIMEOUT").seconds(10, 3600)?,
        max_inflight,
        redis,
        nats,
        postgres,
        postgres_replicas,
        shards,
        drain: setting("--drain", "TP_DRAIN").seconds(10, 3600)?,
        payments: crate::payments::PaymentSettings::default(),
    })
}
