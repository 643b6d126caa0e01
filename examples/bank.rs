//! A bank account, event-sourced: every change is an event, the balance is their sum,
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
//! `--db <file>` picks the database (default `bank.db` in the current directory). Amounts are
//! whole numbers from 1 to 18446744073709551615 (`u64::MAX`), added with checked arithmetic: a
//! deposit that would take the balance past that is refused, and stores nothing. A command line
//! that is not one of the above prints the usage and touches no file.
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
    InsufficientFunds {
        balance: u64,
        wanted: u64,
    },
    /// The deposit would take the balance past the largest amount an account can hold.
    Overflow {
        balance: u64,
        deposit: u64,
    },
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
            Self::Overflow { balance, deposit } => write!(
                f,
                "the balance cannot exceed {}: balance {balance}, deposit {deposit}",
                u64::MAX
            ),
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
            // Checked: a deposit the balance cannot hold is refused before it is stored, so
            // every stored deposit fits and every later load folds without overflow.
            C::Deposit { amount } if self.balance.checked_add(*amount).is_none() => {
                Err(AccountError::Overflow {
                    balance: self.balance,
                    deposit: *amount,
                })
            }
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
            // `handle` refuses what would not fit, so these never saturate for events it
            // decided; an event written some other way must not make every load panic.
            AccountEvent::Deposited { amount } => {
                self.balance = self.balance.saturating_add(*amount);
            }
            AccountEvent::Withdrew { amount } => {
                self.balance = self.balance.saturating_sub(*amount);
            }
        }
    }
}

/// `YYYY-MM-DD` (the end of that day, UTC; years 1970 to 9999) or Unix seconds; `None` for
/// anything else, including instants the system clock cannot represent.
fn parse_when(s: &str) -> Option<SystemTime> {
    if let Ok(secs) = s.parse::<u64>() {
        return UNIX_EPOCH.checked_add(Duration::from_secs(secs));
    }
    let mut parts = s.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
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
    UNIX_EPOCH.checked_add(Duration::from_secs(end_of_day))
}

const USAGE: &str = "usage: bank [--db FILE] open ID OWNER | deposit ID AMOUNT | \
     withdraw ID AMOUNT | balance ID [--at YYYY-MM-DD|UNIX_SECS] | history ID";

/// What the command line asks for.
enum Action {
    Command(String, AccountCommand),
    Balance(String),
    BalanceAt(String, SystemTime, String),
    History(String),
}

/// Reads the command line: the database and the action, or the reason it is not one (then
/// nothing is opened).
fn parse(mut args: Vec<String>) -> Result<(String, Action), String> {
    let mut db = "bank.db".to_owned();
    if let Some(i) = args.iter().position(|a| a == "--db") {
        if i + 1 >= args.len() {
            return Err(USAGE.to_owned());
        }
        db = args.remove(i + 1);
        args.remove(i);
    }
    let amount = |s: &str| {
        s.parse::<u64>().map_err(|_| {
            format!(
                "invalid amount {s:?}: a whole number from 1 to {}",
                u64::MAX
            )
        })
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let action = match args.as_slice() {
        ["open", id, owner] => Action::Command(
            id.to_string(),
            AccountCommand::Open {
                owner: owner.to_string(),
            },
        ),
        ["deposit", id, a] => Action::Command(
            id.to_string(),
            AccountCommand::Deposit { amount: amount(a)? },
        ),
        ["withdraw", id, a] => Action::Command(
            id.to_string(),
            AccountCommand::Withdraw { amount: amount(a)? },
        ),
        ["balance", id] => Action::Balance(id.to_string()),
        ["balance", id, "--at", when] => {
            let at = parse_when(when).ok_or_else(|| USAGE.to_owned())?;
            Action::BalanceAt(id.to_string(), at, when.to_string())
        }
        ["history", id] => Action::History(id.to_string()),
        _ => return Err(USAGE.to_owned()),
    };
    Ok((db, action))
}

/// Runs the command line `args` (without the program name).
pub(crate) async fn run(args: Vec<String>) -> ExitCode {
    let (db, action) = match parse(args) {
        Ok(parsed) => parsed,
        Err(why) => {
            println!("{why}");
            return ExitCode::from(2);
        }
    };
    let store = match SqliteStore::open(&db) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            println!("cannot open {db}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let repo = Repository::<Account, _>::new(store, "account-").snapshot_every(100);
    let (id, command) = match action {
        Action::Command(id, command) => (id, command),
        Action::Balance(id) => {
            return match repo.load(&id).await {
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
        Action::BalanceAt(id, at, when) => {
            return match repo.state_at(&id, at).await {
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
        Action::History(id) => {
            return match repo.history(&id).await {
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    run(std::env::args().skip(1).collect()).await
}
