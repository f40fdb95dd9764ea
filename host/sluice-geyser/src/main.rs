//! `sluice-geyser`: runs a mock Yellowstone provider until killed.
//!
//! Prints `sluice-geyser listening on <addr>` on stdout once listening (harnesses parse it to
//! learn the port when `--listen` asks for port 0) and, with `--stats-every`, a
//! `sluice-geyser stats name=value ...` line that often. Logs go to stderr (`RUST_LOG`,
//! default `info`).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use sluice_geyser::{AccessConfig, ChainConfig, GeyserConfig};
use tracing_subscriber::EnvFilter;

/// A mock Yellowstone (Solana Geyser) provider.
#[derive(Debug, Parser)]
#[command(name = "sluice-geyser", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:10000")]
    listen: SocketAddr,
    /// Time between slots, e.g. `400ms` (Solana's pace) or `20ms` for tests.
    #[arg(long, default_value = "400ms", value_parser = humantime::parse_duration)]
    slot_interval: Duration,
    /// Distinct accounts that updates touch.
    #[arg(long, default_value_t = 64)]
    accounts: u32,
    /// Account updates per slot.
    #[arg(long, default_value_t = 8)]
    account_updates: u32,
    /// Transactions per slot.
    #[arg(long, default_value_t = 4)]
    transactions: u32,
    /// Slots kept for `from_slot` replays.
    #[arg(long, default_value_t = 300)]
    replay_slots: u64,
    /// Time between server pings on each subscription.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    ping_interval: Duration,
    /// `ACCOUNT=TOKEN`: accept `x-token: TOKEN` as ACCOUNT's (repeatable). None: no tokens
    /// checked.
    #[arg(long = "token")]
    tokens: Vec<String>,
    /// Subscriptions one account may hold at once.
    #[arg(long)]
    max_subscriptions: Option<usize>,
    /// Connections one account may hold subscriptions on at once.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Named filters one subscription may hold.
    #[arg(long)]
    max_filters: Option<usize>,
    /// Print a `sluice-geyser stats ...` line this often.
    #[arg(long, value_parser = humantime::parse_duration)]
    stats_every: Option<Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if args.slot_interval.is_zero() || args.ping_interval.is_zero() {
        bail!("--slot-interval and --ping-interval must be more than zero");
    }
    let mut tokens = HashMap::new();
    for pair in &args.tokens {
        let Some((account, token)) = pair.split_once('=') else {
            bail!("--token {pair:?}: expected ACCOUNT=TOKEN");
        };
        tokens.insert(token.to_owned(), account.to_owned());
    }
    let config = GeyserConfig {
        chain: ChainConfig {
            slot_interval: args.slot_interval,
            accounts: args.accounts,
            account_updates_per_slot: args.account_updates,
            transactions_per_slot: args.transactions,
            replay_slots: args.replay_slots,
            ..ChainConfig::default()
        },
        access: AccessConfig {
            tokens,
            max_subscriptions: args.max_subscriptions,
            max_connections: args.max_connections,
            max_filters: args.max_filters,
        },
        ping_interval: args.ping_interval,
    };
    let handle = sluice_geyser::spawn(args.listen, config)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "sluice-geyser listening on {}", handle.addr)?;
        stdout.flush()?;
    }
    if let Some(every) = args.stats_every {
        let stats = std::sync::Arc::clone(&handle.stats);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "{stats}");
                let _ = stdout.flush();
            }
        });
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
