//! SIGINT and SIGTERM: instead of dying with plans still running at the broker, the CLI stops
//! what it was doing, cancels it, and exits with the shell's status for the signal (128 + its
//! number) after printing the `905 interrupted` error line.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signals the CLI handles, once their handlers are installed.
pub(crate) struct Interrupts {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
}

impl Interrupts {
    /// Installs the handlers (from then on the signals no longer kill the process). A handler
    /// that cannot be installed leaves that signal's default action in place.
    pub(crate) fn listen() -> Interrupts {
        Interrupts {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }

    /// Waits for the first of the signals and returns its name.
    pub(crate) async fn next(&mut self) -> &'static str {
        let interrupt = async {
            match &mut self.interrupt {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let terminate = async {
            match &mut self.terminate {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt => SIGINT,
            _ = terminate => SIGTERM,
        }
    }
}

/// The name of SIGINT (Ctrl-C).
pub(crate) const SIGINT: &str = "SIGINT";
/// The name of SIGTERM (`kill`, service managers).
pub(crate) const SIGTERM: &str = "SIGTERM";

/// The exit status after a signal, as shells report a process killed by it: 128 + its number
/// (130 for SIGINT, 143 for SIGTERM).
pub fn exit_status(signal: &str) -> u8 {
    match signal {
        SIGINT => 128 + 2,
        SIGTERM => 128 + 15,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_the_shells() {
        assert_eq!(exit_status(SIGINT), 130);
        assert_eq!(exit_status(SIGTERM), 143);
        assert_eq!(exit_status("SIGHUP"), 1);
    }
}
