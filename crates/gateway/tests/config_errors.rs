//! Bad configuration files are refused with the line, the column and the dotted key at fault;
//! the sample file of the example parses.

use std::path::PathBuf;
use std::time::Duration;

use tower_patterns_gateway::{ConfigFileError, GatewayConfig};

/// One upstream group and a first route (lines 1 to 8); a case's second route starts on line 9.
const FIRST_ROUTE: &[&str] = &[
    "[upstreams.users]",
    "addresses = [\"127.0.0.1:9101\"]",
    "",
    "[[routes]]",
    "name = \"a\"",
    "prefix = \"/a\"",
    "upstream = \"users\"",
    "",
];

/// A bad file and where its error must point.
struct Case {
    name: &'static str,
    lines: Vec<&'static str>,
    line: usize,
    column: usize,
    key: &'static str,
    message: &'static str,
}

fn case(
    name: &'static str,
    lines: &[&'static str],
    (line, column): (usize, usize),
    key: &'static str,
    message: &'static str,
) -> Case {
    Case {
        name,
        lines: lines.to_vec(),
        line,
        column,
        key,
        message,
    }
}

/// A case whose file is `FIRST_ROUTE` followed by `rest` (so `rest[0]` is on line 9).
fn second_route(
    name: &'static str,
    rest: &[&'static str],
    at: (usize, usize),
    key: &'static str,
    message: &'static str,
) -> Case {
    let mut c = case(name, rest, at, key, message);
    c.lines = FIRST_ROUTE.iter().chain(rest).copied().collect();
    c
}

fn cases() -> Vec<Case> {
    vec![
        case(
            "unknown key at the top level",
            &["bogus = 1", "[server]"],
            (1, 1),
            "bogus",
            "unknown field `bogus`",
        ),
        case(
            "unknown key in [server]",
            &["[server]", "listen = \"127.0.0.1:8080\"", "bogus = 1"],
            (3, 1),
            "server.bogus",
            "unknown field `bogus`, expected one of `listen`",
        ),
        second_route(
            "unknown key in the second route",
            &["[[routes]]", "name = \"b\"", "prefix = \"/b\"", "bogus = 1"],
            (12, 1),
            "routes[1].bogus",
            "unknown field `bogus`",
        ),
        case(
            "unknown key in an inline table",
            &[
                "[upstreams.users]",
                "addresses = [\"127.0.0.1:9101\"]",
                "retry = { attempts = 2, bogus = 1 }",
            ],
            (3, 25),
            "upstreams.users.retry.bogus",
            "unknown field `bogus`, expected one of `attempts`",
        ),
        case(
            "bad duration",
            &[
                "[upstreams.users]",
                "addresses = [\"127.0.0.1:9101\"]",
                "timeout = \"5 parsecs\"",
            ],
            (3, 11),
            "upstreams.users.timeout",
            "\"5 parsecs\" is not a duration",
        ),
        case(
            "bad size",
            &["[server]", "max_body = \"1PiB\""],
            (2, 12),
            "server.max_body",
            "\"1PiB\" is not a size",
        ),
        case(
            "bad rate",
            &["[limits.l]", "key = \"client_ip\"", "rate = \"10/w\""],
            (3, 8),
            "limits.l.rate",
            "\"10/w\" is not a rate",
        ),
        case(
            "bad rate in an inline table, after a good one",
            &[
                "[limits.l]",
                "key = \"client_ip\"",
                "rate = \"10/s\"",
                "plans = { gold = \"100/s\", free = \"10/w\" }",
            ],
            (4, 34),
            "limits.l.plans.free",
            "\"10/w\" is not a rate",
        ),
        case(
            "wrong type",
            &["[server]", "listen = 5"],
            (2, 10),
            "server.listen",
            "invalid type: integer `5`, expected a string",
        ),
        second_route(
            "missing upstream",
            &[
                "[[routes]]",
                "name = \"b\"",
                "prefix = \"/b\"",
                "upstream = \"userz\"",
            ],
            (12, 12),
            "routes[1].upstream",
            "no upstream group \"userz\"",
        ),
        second_route(
            "missing auth scheme",
            &[
                "[[routes]]",
                "name = \"b\"",
                "prefix = \"/b\"",
                "upstream = \"users\"",
                "auth = \"nobody\"",
            ],
            (13, 8),
            "routes[1].auth",
            "no auth scheme \"nobody\"",
        ),
        second_route(
            "missing limit",
            &[
                "[[routes]]",
                "name = \"b\"",
                "prefix = \"/b\"",
                "upstream = \"users\"",
                "limit = \"nolimit\"",
            ],
            (13, 9),
            "routes[1].limit",
            "no limit \"nolimit\"",
        ),
        second_route(
            "path and prefix",
            &[
                "[[routes]]",
                "name = \"b\"",
                "path = \"/b\"",
                "prefix = \"/b\"",
                "upstream = \"users\"",
            ],
            (9, 1),
            "routes[1]",
            "route \"b\" needs exactly one of path and prefix",
        ),
        second_route(
            "neither upstream nor aggregate",
            &["[[routes]]", "name = \"b\"", "prefix = \"/b\""],
            (9, 1),
            "routes[1]",
            "route \"b\" needs exactly one of upstream, aggregate and strangler",
        ),
        second_route(
            "duplicate route name",
            &[
                "[[routes]]",
                "name = \"a\"",
                "prefix = \"/b\"",
                "upstream = \"users\"",
            ],
            (9, 1),
            "routes[1]",
            "route \"a\" is defined twice",
        ),
        second_route(
            "bad method",
            &[
                "[[routes]]",
                "name = \"b\"",
                "prefix = \"/b\"",
                "methods = [\"GET\", \"G T\"]",
                "upstream = \"users\"",
            ],
            (12, 19),
            "routes[1].methods",
            "\"G T\" is not an HTTP method",
        ),
        second_route(
            "bad header name in remove_headers",
            &[
                "[[routes]]",
                "name = \"b\"",
                "prefix = \"/b\"",
                "upstream = \"users\"",
                "request = { remove_headers = [\"bad header\"] }",
            ],
            (9, 1),
            "routes[1]",
            "\"bad header\" is not a header name",
        ),
        second_route(
            "bad header name in remove_headers of a [routes.request] table",
            &[
                "[[routes]]",
                "name = \"b\"",
                "prefix = \"/b\"",
                "upstream = \"users\"",
                "[routes.request]",
                "remove_headers = [\"bad header\"]",
            ],
            (9, 1),
            "routes[1]",
            "\"bad header\" is not a header name",
        ),
        case(
            "bad address in an upstream group",
            &[
                "[upstreams.users]",
                "addresses = [\"127.0.0.1:9101\", \"localhost\"]",
            ],
            (2, 32),
            "upstreams.users.addresses",
            "\"localhost\" is not an address",
        ),
        case(
            "admin listener off loopback without token_env",
            &["[admin]", "listen = \"0.0.0.0:9901\""],
            (2, 10),
            "admin.listen",
            "an admin listener off loopback needs admin.token_env",
        ),
        second_route(
            "limit keyed by consumer on a route without auth",
            &[
                "[[routes]]",
                "name = \"b\"",
                "prefix = \"/b\"",
                "upstream = \"users\"",
                "limit = \"per_consumer\"",
                "",
                "[limits.per_consumer]",
                "key = \"consumer\"",
                "rate = \"5/s\"",
            ],
            (13, 9),
            "routes[1].limit",
            "a limit keyed by consumer needs the route to have auth",
        ),
        case(
            "store = \"redis\" without a [redis] table",
            &[
                "[limits.l]",
                "key = \"client_ip\"",
                "rate = \"5/s\"",
                "store = \"redis\"",
            ],
            (4, 9),
            "limits.l.store",
            "store = \"redis\" needs a [redis] table",
        ),
        second_route(
            "aggregate with one part",
            &[
                "[[routes]]",
                "name = \"b\"",
                "prefix = \"/b\"",
                "aggregate = { parts = [{ name = \"u\", upstream = \"users\", path = \"/u\" }] }",
            ],
            (9, 1),
            "routes[1]",
            "an aggregate has two parts or more",
        ),
        second_route(
            "a request rule that writes the consumer header",
            &[
                "[[routes]]",
                "name = \"b\"",
                "prefix = \"/b\"",
                "upstream = \"users\"",
                "request = { rename_headers = { x-user = \"X-Consumer-Id\" } }",
            ],
            (9, 1),
            "routes[1]",
            "request rules may not write \"X-Consumer-Id\"",
        ),
        second_route(
            "a request rule that sets a stripped prefix",
            &[
                "[identity]",
                "strip = [\"x-internal-*\"]",
                "[[routes]]",
                "name = \"b\"",
                "prefix = \"/b\"",
                "upstream = \"users\"",
                "request = { set_headers = { x-internal-role = \"admin\" } }",
            ],
            (11, 1),
            "routes[1]",
            "only the gateway sets the identity headers",
        ),
        second_route(
            "a method in small letters",
            &[
                "[[routes]]",
                "name = \"b\"",
                "prefix = \"/b\"",
                "upstream = \"users\"",
                "methods = [\"GET\", \"get\"]",
            ],
            (13, 19),
            "routes[1].methods",
            "methods are written in capitals",
        ),
        case(
            "a duration of centuries",
            &["[server]", "header_read_timeout = \"5000000000000000h\""],
            (2, 23),
            "server.header_read_timeout",
            "longer than a day",
        ),
    ]
}

fn parse(text: &str) -> Result<GatewayConfig, ConfigFileError> {
    GatewayConfig::parse(text, "gw.toml")
}

#[test]
fn each_bad_file_is_refused_at_its_line_column_and_key() {
    let mut wrong = Vec::new();
    for c in cases() {
        let text = c.lines.join("\n") + "\n";
        let Err(e) = parse(&text) else {
            wrong.push(format!("{}: accepted", c.name));
            continue;
        };
        let got = (e.line(), e.column(), e.key());
        let expected = (c.line, c.column, c.key);
        if got != expected || !e.message().contains(c.message) || e.file() != "gw.toml" {
            wrong.push(format!(
                "{}: got {got:?} {:?}, expected {expected:?} {:?}",
                c.name,
                e.message(),
                c.message
            ));
            continue;
        }
        let display = format!(
            "gw.toml:{}:{}: {}: {}",
            c.line,
            c.column,
            c.key,
            e.message()
        );
        if e.to_string() != display {
            wrong.push(format!("{}: displayed as {e}", c.name));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn an_empty_file_is_valid_and_has_no_routes() {
    let config = parse("").unwrap();
    assert_eq!(config.route_names().count(), 0);
    assert_eq!(config.listen(), "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.admin_listen(), None);
    assert_eq!(config.poll_interval(), Duration::from_secs(1));
    assert_eq!(config.origin(), "gw.toml");
}

#[test]
fn a_file_that_cannot_be_read_is_an_error_at_line_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.toml");
    let e = GatewayConfig::from_file(&path).unwrap_err();
    let file = path.display().to_string();
    assert_eq!(
        (e.file(), e.line(), e.column(), e.key()),
        (&*file, 1, 1, "")
    );
    assert!(
        e.message().starts_with("cannot read the file: "),
        "{}",
        e.message()
    );
    assert_eq!(e.to_string(), format!("{file}:1:1: {}", e.message()));
}

#[test]
fn the_sample_file_parses() {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "../../examples/gateway/gateway.toml",
    ]
    .iter()
    .collect();
    let config = GatewayConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.route_names().collect::<Vec<_>>(),
        ["users", "orders", "profile", "echo-v2", "echo"]
    );
    assert_eq!(config.listen(), "127.0.0.1:8080".parse().unwrap());
    assert_eq!(
        config.admin_listen(),
        Some("127.0.0.1:9901".parse().unwrap())
    );
    assert_eq!(config.poll_interval(), Duration::from_secs(1));
}
