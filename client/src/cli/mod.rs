//! The `nymstr` command-line client: arguments, dispatch, exit codes.
//!
//! Every command that talks to the node connects over TCP, logs in (the node gives each
//! connection a fresh sender tag), does its work through the sans-IO `ClientCore`, and
//! persists the client in sled under the home directory (`crate::persist`).

mod clock;
mod commands;
mod common;
#[cfg(unix)]
mod control;
pub mod error;
mod groups;
mod input;
mod output;
mod session;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

pub use error::{CliError, EXIT_CODES_HELP, exit};
use output::Printer;

#[derive(Parser, Debug)]
#[command(
    name = "nymstr",
    version,
    about = "Chat over a nymstr node: end-to-end encrypted direct messages and group chats",
    long_about = "Chat over a nymstr node: end-to-end encrypted direct messages and MLS group chats.\n\n\
                  Start with `nymstr init`, then `nymstr register NAME --node HOST:PORT`.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// State directory (keys, contacts, history) [default: $NYMSTR_HOME, else ~/.nymstr]
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Print JSON (one object per line) instead of text
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the node and peers before giving up
    #[arg(long, global = true, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the home directory and this device's keys (refuses if they exist)
    Init,
    /// Register a username with a node (saves the node's address)
    Register {
        /// The username: 3-32 of a-z, 0-9 and _, starting with a letter
        name: String,
        /// The node, as HOST:PORT
        #[arg(long, value_name = "HOST:PORT")]
        node: String,
    },
    /// Look a user up on the node and pin their account key on first use
    Lookup {
        name: String,
        /// Use this node instead of the saved one
        #[arg(long, value_name = "HOST:PORT")]
        node: Option<String>,
    },
    /// Send a message; exits 0 once the node (or the recipient directly) acknowledged it
    Send {
        /// The recipient's username
        name: String,
        /// The message: the words are joined with spaces; "-" reads it from standard
        /// input; put `--` before a message that starts with "-"
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        /// Use this node instead of the saved one
        #[arg(long, value_name = "HOST:PORT")]
        node: Option<String>,
    },
    /// Fetch and show new messages, then exit
    Inbox {
        /// Keep listening this many seconds for more messages
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
        /// Use this node instead of the saved one
        #[arg(long, value_name = "HOST:PORT")]
        node: Option<String>,
    },
    /// Stay connected and show messages as they arrive, until Ctrl-C. Lines typed on
    /// standard input are commands: /msg NAME TEXT, /to NAME (then plain lines go to
    /// NAME), /direct NAME, /direct-off NAME, /help, /quit
    Listen {
        /// Accept direct connections from contacts on this address (HOST:PORT; port 0
        /// picks one). Only contacts you approve (--offer, /direct) learn the address
        #[arg(long, value_name = "HOST:PORT")]
        direct: Option<String>,
        /// The address contacts should connect to, if not the bound one (NAT, 0.0.0.0)
        #[arg(long, value_name = "HOST:PORT", requires = "direct")]
        advertise: Option<String>,
        /// Approve this contact for direct delivery and offer it (repeatable); offers
        /// from anyone else are shown, not answered
        #[arg(long = "offer", value_name = "NAME", requires = "direct")]
        offer: Vec<String>,
        /// Use this node instead of the saved one
        #[arg(long, value_name = "HOST:PORT")]
        node: Option<String>,
    },
    /// Show pinned contacts with their key fingerprints and direct-delivery state
    Contacts,
    /// Show the message history (with one contact, or all)
    History {
        name: Option<String>,
        /// Show at most this many messages (the most recent)
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Accept a contact's new account key after you verified it out of band
    Trust {
        name: String,
        /// The new account key, 64 hex digits (spaces allowed)
        #[arg(long, value_name = "KEY")]
        key: String,
    },
    /// Show this device's identity, node and pending messages
    Status,
    /// The nodes whose cosignatures count in transparency checks (only those added here)
    Witness {
        #[command(subcommand)]
        command: WitnessCommand,
    },
    /// Group chats: create, invite, join, send, members, leave, remove, rename, list
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// List the public groups a node advertises (id, name, description, open)
    Directory {
        /// Ask this node instead of the saved one
        #[arg(long, value_name = "HOST:PORT")]
        node: Option<String>,
    },
}

/// `nymstr witness`: what the user names as witnesses.
#[derive(Subcommand, Debug)]
pub enum WitnessCommand {
    /// Add the node of a descriptor file (its `descriptor.json`, obtained out of band)
    Add { descriptor: std::path::PathBuf },
    /// List the witnesses
    List,
}

/// GROUP is a group's name (if no other group of yours has it) or its id in hex (a
/// unique prefix of 4 or more digits will do). Commands that change a group wait until
/// the change is in the group's log and applied; exit 6 if that takes longer than
/// --timeout (the change is stored and goes on with the next command).
#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Create a group with you as its only member and admin
    Create {
        name: String,
        /// List it in the node's directory (name, description, open)
        #[arg(long)]
        public: bool,
        /// Anyone may join (else invite only)
        #[arg(long)]
        open: bool,
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// Host it at this node instead of the saved one
        #[arg(long, value_name = "HOST:PORT")]
        node: Option<String>,
    },
    /// Invite a user (admins only): sends them an end-to-end encrypted invitation
    Invite {
        group: String,
        #[arg(required_unless_present = "code")]
        user: Option<String>,
        /// Print a single-use invitation code instead (whoever has it can join: pass it
        /// on privately); `nymstr group join CODE` accepts it
        #[arg(long)]
        code: bool,
    },
    /// Accept an invitation (its group id, id prefix or group name, as `inbox` shows it;
    /// or an invitation code), or join an open group by its id
    Join {
        /// An invitation, an invitation code, or the id of an open group (32 hex digits, see
        /// `nymstr directory`)
        group: String,
        /// The group node, for joining by id [default: the saved node]
        #[arg(long, value_name = "HOST:PORT")]
        node: Option<String>,
    },
    /// Send a message to a group; exits 0 once it is in the group's log
    Send {
        group: String,
        /// The message: the words are joined with spaces; "-" reads it from standard input
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Show a group's members (after catching up with its log)
    Members { group: String },
    /// Leave a group (an admin's client commits it)
    Leave { group: String },
    /// Remove a member (admins only)
    Remove { group: String, user: String },
    /// Rename a group (admins only)
    Rename { group: String, name: String },
    /// Change a group's description (admins only)
    Describe {
        group: String,
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// List your groups and pending invitations
    List,
    /// Show group messages and notices (of one group, or all)
    History {
        group: Option<String>,
        /// Show at most this many lines (the most recent)
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// The home directory: `--home`, else `$NYMSTR_HOME`, else `~/.nymstr`.
fn home_dir(flag: Option<PathBuf>) -> Result<PathBuf, CliError> {
    if let Some(dir) = flag {
        return Ok(dir);
    }
    if let Some(dir) = std::env::var_os("NYMSTR_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".nymstr")),
        None => Err(CliError::Usage("no home directory: pass --home DIR or set NYMSTR_HOME".into())),
    }
}

/// Runs the CLI with the process arguments; returns the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print and succeed; usage errors exit 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    let out = Printer::new(cli.json);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            out.error("runtime", &format!("cannot start the async runtime: {e}"), exit::FAILURE);
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(run(cli, &out));
    // Standard input is read on a blocking thread that cannot be cancelled: do not wait.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out.error(e.kind(), &e.to_string(), e.exit_code());
            e.exit()
        }
    }
}

async fn run(cli: Cli, out: &Printer) -> Result<(), CliError> {
    let home = home_dir(cli.home)?;
    let timeout = Duration::from_secs(cli.timeout.max(1));
    let json = cli.json;
    let printer = || Printer::new(json);
    let _ = out;
    match cli.command {
        Command::Init => commands::init(&home, &printer()),
        Command::Register { name, node } => commands::register(&home, printer(), &name, &node, timeout).await,
        Command::Lookup { name, node } => commands::lookup(&home, printer(), &name, node, timeout).await,
        Command::Send { name, text, node } => commands::send(&home, printer(), &name, text, node, timeout).await,
        Command::Inbox { wait, node } => commands::inbox(&home, printer(), wait, node, timeout).await,
        Command::Listen { direct, advertise, offer, node } => {
            commands::listen(&home, printer(), direct, advertise, offer, node, timeout).await
        }
        Command::Contacts => commands::contacts(&home, &printer()),
        Command::History { name, limit } => commands::history(&home, &printer(), name, limit),
        Command::Trust { name, key } => commands::trust(&home, &printer(), &name, &key),
        Command::Status => commands::status(&home, &printer()),
        Command::Witness { command: WitnessCommand::Add { descriptor } } => {
            commands::witness_add(&home, &printer(), &descriptor)
        }
        Command::Witness { command: WitnessCommand::List } => commands::witness_list(&home, &printer()),
        Command::Directory { node } => groups::directory(&home, &printer(), node, timeout).await,
        Command::Group { command } => {
            let out = printer();
            match command {
                GroupCommand::Create { name, public, open, description, node } => {
                    groups::create(&home, out, &name, description, public, open, node, timeout).await
                }
                GroupCommand::Invite { group, user, code } => {
                    groups::invite(&home, out, &group, user, code, timeout).await
                }
                GroupCommand::Join { group, node } => groups::join(&home, out, &group, node, timeout).await,
                GroupCommand::Send { group, text } => groups::send(&home, out, &group, text, timeout).await,
                GroupCommand::Members { group } => groups::members(&home, out, &group, timeout).await,
                GroupCommand::Leave { group } => groups::leave(&home, out, &group, timeout).await,
                GroupCommand::Remove { group, user } => groups::remove(&home, out, &group, &user, timeout).await,
                GroupCommand::Rename { group, name } => {
                    groups::set_meta(&home, out, &group, Some(name), None, timeout).await
                }
                GroupCommand::Describe { group, text } => {
                    groups::set_meta(&home, out, &group, None, Some(text.join(" ")), timeout).await
                }
                GroupCommand::List => groups::list(&home, &out),
                GroupCommand::History { group, limit } => groups::history(&home, &out, group, limit),
            }
        }
    }
}
