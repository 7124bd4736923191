//! What the session's loop waits for (`Wake`), a sleep that may never end, and the
//! signals (Ctrl-C, SIGTERM) registered once.

use tokio::time::Instant;

use crate::net::{LinkEvent, NetError};

pub(super) enum Wake {
    Node(Result<Vec<u8>, NetError>),
    DirectAnswer(u64, Result<Vec<u8>, NetError>),
    DirectFrame(u64, Vec<u8>),
    Line(Option<String>),
    Timer,
    GoalTimer,
    Deadline,
    Reconnect,
    Interrupt,
    Group(LinkEvent),
    GroupTimer,
    GroupReconnect(String),
    #[cfg(unix)]
    Control(crate::cli::control::ControlRequest),
}

#[cfg(unix)]
pub(super) fn control_wake(req: crate::cli::control::ControlRequest) -> Wake {
    Wake::Control(req)
}

#[cfg(not(unix))]
pub(super) fn control_wake(_: ()) -> Wake {
    Wake::GoalTimer
}

pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Ctrl-C and SIGTERM, registered once so none is missed between waits.
pub(super) struct Signals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub(super) fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self { int: signal(SignalKind::interrupt()).ok(), term: signal(SignalKind::terminate()).ok() }
        }
        #[cfg(not(unix))]
        Self {}
    }

    pub(super) async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let int = async {
                match &mut self.int {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let term = async {
                match &mut self.term {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = int => {}
                _ = term => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
