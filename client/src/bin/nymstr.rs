//! `nymstr`: the command-line chat client (see `nymstr --help` and the README).

fn main() -> std::process::ExitCode {
    nymstr_client::cli::main()
}
