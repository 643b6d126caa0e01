//! The seed's bank account (pattern 2): every change is an event, the balance is their sum,
//! and the past can be asked about. A small CLI over a SQLite file.
//!
//! ```text
//! cargo run --example bank --features eventstore -- open acc-1 ada
//! cargo run --example bank --features eventstore -- deposit acc-1 100
//! cargo run --example bank --features eventstore -- withdraw acc-1 30
//! cargo run --example bank --features eventstore -- withdraw acc-1 500   # insufficient funds
//! cargo run --example bank --features eventstore -- balance acc-1
//! cargo run --example bank --features eventstore -- balance acc-1 --at 2026-11-27
//! cargo run --example bank --features eventstore -- history acc-1
//! ```
//!
//! `--db <file>` picks the database (default `bank.db` in the current directory).
#![allow(
    clippy::print_stdout,
    reason = "a command-line example prints its answers"
)]

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use tower_patterns::eventstore::{
    Aggregate, Command, CommandService, DomainEvent, Metadata, Repository, RepositoryError,
    sqlite::SqliteStore,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
    Withdrew { amount: u64 },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Opened { .. } => "Opened",
            Self::Deposited { .. } => "Deposited",
            Self::Withdrew { .. } => "Withdrew",
        }
    }
}

#[derive(Clone, Debug)]
enum AccountCommand {
    Open { owner: String },
    Deposit { amount: u64 },
    Withdraw { amount: u64 },
}

#[derive(Debug)]
enum AccountError {
    AlreadyOpen,
    NotOpen,
    ZeroAmount,
    InsufficientFunds { balance: u64, wanted: u64 },
}

impl std::fmt::Display for AccountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AlreadyOpen => f.write_str("the account is already open"),
            Self::NotOpen => f.write_str("no such account"),
            Self::ZeroAmount => f.write_str("the amount must be more than zero"),
            Self::InsufficientFunds { balance, wanted } => {
                write!(f, "insufficient funds: balance {balance}, asked {wanted}")
            }
        }
    }
}

impl std::error::Error for AccountError {}

#[derive(Default, Serialize, Deserialize)]
struct Account {
    owner: Option<String>,
    balance: u64,
}

impl Aggregate for Account {
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand as C;
        match command {
            C::Open { .. } if self.owner.is_some() => Err(AccountError::AlreadyOpen),
            C::Open { owner } => Ok(vec![AccountEvent::Opened {
                owner: owner.clone(),
            }]),
            _ if self.owner.is_none() => Err(AccountError::NotOpen),
            C::Deposit { amount: 0 } | C::Withdraw { amount: 0 } => Err(AccountError::ZeroAmount),
            C::Deposit { amount } => Ok(vec![AccountEvent::Deposited { amount: *amount }]),
            C::Withdraw { amount } if *amount > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    wanted: *amount,
                })
            }
            C::Withdraw { amount } => Ok(vec![AccountEvent::Withdrew { amount: *amount }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => self.owner = Some(owner.clone()),
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrew { amount } => self.balance -= amount,
        }
    }
}

/// `YYYY-MM-DD` (the end of that day, UTC) or Unix seconds.
fn parse_when(s: &str) -> Option<SystemTime> {
    if let Ok(secs) = s.parse::<u64>() {
        return Some(UNIX_EPOCH + Duration::from_secs(secs));
    }
    let mut parts = s.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let end_of_day = u64::try_from(days * 86_400 + 86_399).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(end_of_day))
}

fn usage() -> ExitCode {
    println!(
        "usage: bank [--db FILE] open ID OWNER | deposit ID AMOUNT | withdraw ID AMOUNT | \
         balance ID [--at YYYY-MM-DD|UNIX_SECS] | history ID"
    );
    ExitCode::from(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut db = "bank.db".to_owned();
    if let Some(i) = args.iter().position(|a| a == "--db") {
        if i + 1 >= args.len() {
            return usage();
        }
        db = args.remove(i + 1);
        args.remove(i);
    }
    let store = match SqliteStore::open(&db) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            println!("cannot open {db}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let repo = Repository::<Account, _>::new(store, "account-").snapshot_every(100);
    let amount = |s: &str| s.parse::<u64>().ok();
    let command = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["open", id, owner] => Some((
            id.to_string(),
            AccountCommand::Open {
                owner: owner.to_string(),
            },
        )),
        ["deposit", id, a] => {
            amount(a).map(|amount| (id.to_string(), AccountCommand::Deposit { amount }))
        }
        ["withdraw", id, a] => {
            amount(a).map(|amount| (id.to_string(), AccountCommand::Withdraw { amount }))
        }
        ["balance", id] => {
            return match repo.load(id).await {
                Ok(a) if a.state.owner.is_some() => {
                    println!(
                        "{id}: balance {} after {} events",
                        a.state.balance, a.version
                    );
                    ExitCode::SUCCESS
                }
                Ok(_) => {
                    println!("{id}: no such account");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    println!("error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        ["balance", id, "--at", when] => {
            let Some(at) = parse_when(when) else {
                return usage();
            };
            return match repo.state_at(id, at).await {
                Ok(a) => {
                    println!(
                        "{id}: balance {} on {when} ({} events by then)",
                        a.state.balance, a.version
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        ["history", id] => {
            return match repo.history(id).await {
                Ok(h) => {
                    for e in h {
                        let secs = e
                            .metadata
                            .recorded_at()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        println!("v{:<4} at {secs:>10}  {:?}", e.version, e.event);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => None,
    };
    let Some((id, command)) = command else {
        return usage();
    };
    // Commands go through a tower Service: breakers, timeouts and retries would stack here.
    let svc = CommandService::new(repo);
    match svc
        .oneshot(Command::new(id.clone(), command).with_metadata(Metadata::default()))
        .await
    {
        Ok(done) => {
            println!("{id}: ok (version {})", done.version);
            ExitCode::SUCCESS
        }
        Err(RepositoryError::Domain(e)) => {
            println!("{id}: refused: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("{id}: error: {e}");
            ExitCode::FAILURE
        }
    }
}
