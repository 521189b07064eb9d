//! `loadtest`: the command line. Parses options, runs one scenario, prints its summary table
//! (or one JSON object with `--json`), and draws `--plot` if asked.

use anyhow::Result;
use clap::{Parser, Subcommand};

use loadtest::common::Common;
use loadtest::scenarios::{chat, connections, hold, latency, storm};

/// Load generator for WebSocket chat servers (socket-server protocol, loopback only).
#[derive(Debug, Parser)]
#[command(name = "loadtest", version)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// R clients in one chat sending in closed-loop rounds: deliveries per second.
    Chat(chat::ChatArgs),
    /// Fixed send rate, end-to-end latency percentiles (coordinated-omission safe).
    Latency(latency::LatencyArgs),
    /// Open and hold N idle connections: server RSS per connection.
    Connections(connections::ConnectionsArgs),
    /// Connect + authenticate until a count: connections per second, auth latency.
    Storm(storm::StormArgs),
    /// (internal) a child of `connections`.
    #[command(hide = true)]
    Hold(hold::HoldArgs),
}

fn emit<T: serde::Serialize>(
    common: &Common,
    result: &T,
    table: &loadtest::report::Table,
) -> Result<()> {
    if common.json {
        eprint!("{}", table.render());
        println!("{}", serde_json::to_string(result)?);
    } else {
        print!("{}", table.render());
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let c = &cli.common;
    match &cli.scenario {
        Scenario::Chat(a) => {
            let r = chat::run(c, a)?;
            if let Some(p) = &c.plot {
                let title = format!("chat: {} clients, {}", r.clients, c.url);
                loadtest::plot::throughput(p, &title, &r.timeline)?;
            }
            emit(c, &r, &r.table())
        }
        Scenario::Latency(a) => {
            let r = latency::run(c, a)?;
            if let Some(p) = &c.plot {
                let title = format!(
                    "latency: {} msgs/s x {} clients, {}",
                    r.rate, r.clients, c.url
                );
                loadtest::plot::latency(p, &title, &r.histogram, &r.latency)?;
            }
            emit(c, &r, &r.table())
        }
        Scenario::Connections(a) => {
            let r = connections::run(c, a)?;
            emit(c, &r, &r.table())
        }
        Scenario::Storm(a) => {
            let r = storm::run(c, a)?;
            emit(c, &r, &r.table())
        }
        Scenario::Hold(a) => hold::run(&c.url, c.rooms.max(1), c.first_user, c.connect_timeout, a),
    }
}
