//! `nymstr-sim`: run a scenario (or the embedded default) and print its report.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nymstr_sim::{Report, Scenario, run};

#[derive(Parser)]
#[command(name = "nymstr-sim", version, about = "Deterministic simulator of a nymstr federation over a mixnet model")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario (the embedded default when no file is given).
    Run {
        /// Scenario file (TOML).
        scenario: Option<PathBuf>,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Print one JSON object instead of the human summary.
        #[arg(long)]
        json: bool,
        /// Run twice and fail unless both traces hash the same.
        #[arg(long)]
        check_determinism: bool,
    },
    /// Run one scenario under many seeds; report every failing seed.
    Swarm {
        scenario: Option<PathBuf>,
        /// Number of seeds to try.
        #[arg(long, default_value_t = 20)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
    /// Print the embedded default scenario.
    Default,
}

fn load(path: Option<&PathBuf>) -> Result<(Scenario, String), String> {
    match path {
        None => Ok((Scenario::default_scenario(), "(embedded default)".into())),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            Scenario::parse(&text).map(|s| (s, p.display().to_string())).map_err(|e| format!("{}: {e}", p.display()))
        }
    }
}

fn replay_hint(name: &str, seed: u64) -> String {
    let file = if name.starts_with('(') { String::new() } else { format!("{name} ") };
    format!("replay: nymstr-sim run {file}--seed {seed}")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command =
        cli.command.unwrap_or(Command::Run { scenario: None, seed: None, json: false, check_determinism: false });
    match command {
        Command::Default => {
            print!("{}", nymstr_sim::scenario::DEFAULT_SCENARIO);
            ExitCode::SUCCESS
        }
        Command::Run { scenario, seed, json, check_determinism } => {
            let (mut sc, name) = match load(scenario.as_ref()) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(seed) = seed {
                sc.seed = seed;
            }
            let report: Report = run(sc.clone());
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.summary());
            }
            let mut ok = report.ok();
            if check_determinism {
                let again = run(sc);
                if again.trace_hash == report.trace_hash {
                    eprintln!("determinism: two runs, same trace hash {}", report.trace_hash);
                } else {
                    eprintln!("determinism: FAILED: {} then {}", report.trace_hash, again.trace_hash);
                    ok = false;
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                eprintln!("invariant violated with seed {}; {}", report.seed, replay_hint(&name, report.seed));
                ExitCode::FAILURE
            }
        }
        Command::Swarm { scenario, seeds, from } => {
            let (sc, name) = match load(scenario.as_ref()) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut failing = Vec::new();
            for seed in from..from + seeds {
                let mut s = sc.clone();
                s.seed = seed;
                let r = run(s);
                let verdict =
                    if r.ok() { "ok".to_string() } else { format!("{} violation(s)", r.invariants.violations.len()) };
                println!("seed {seed}: {verdict}  trace {}  dm {}/{}", &r.trace_hash[..16], r.dm.delivered, r.dm.sent);
                if !r.ok() {
                    for v in r.invariants.violations.iter().take(3) {
                        println!("    {v}");
                    }
                    failing.push(seed);
                }
            }
            if failing.is_empty() {
                println!("swarm: {seeds} seeds, all hold");
                ExitCode::SUCCESS
            } else {
                for seed in &failing {
                    println!("{}", replay_hint(&name, *seed));
                }
                ExitCode::FAILURE
            }
        }
    }
}
