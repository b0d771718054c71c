//! The live status line of `mpreg plan --progress` on a terminal: one line on stderr,
//! rewritten in place as steps finish and every [`TICK`] (`\r` then the text, cleared at the
//! end), e.g. `plan 01JQ...XB: 3/10 steps done, last c on n1, 1.2 s`. When stderr is not a
//! terminal nothing is written there and the output is exactly the JSON lines of stdout.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use mpreg::error::Error;
use mpreg::{PlanBuilder, PlanEvent, PlanTrace, Progress, Value};

/// How often the elapsed time is redrawn while nothing finishes.
pub const TICK: Duration = Duration::from_millis(200);

/// Longest status line drawn (longer texts are cut), so that a line never wraps on a usual
/// terminal (wrapped lines cannot be rewritten in place).
pub const MAX_WIDTH: usize = 100;

/// What the status line shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The plan's id, once known (from the first progress event).
    pub plan: Option<String>,
    /// Steps finished.
    pub done: usize,
    /// Steps in the plan.
    pub total: usize,
    /// The last step finished and where it ran.
    pub last: Option<(String, String)>,
}

impl Status {
    /// The line for this status after `elapsed`, at most [`MAX_WIDTH`] characters.
    pub fn render(&self, elapsed: Duration) -> String {
        let mut text = String::from("plan");
        if let Some(plan) = &self.plan {
            text.push(' ');
            text.push_str(plan);
        }
        text.push_str(&format!(": {}/{} steps done", self.done, self.total));
        if let Some((step, worker)) = &self.last {
            text.push_str(&format!(", last {step} on {worker}"));
        }
        text.push_str(&format!(", {:.1} s", elapsed.as_secs_f64()));
        text.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .take(MAX_WIDTH)
            .collect()
    }
}

/// Draws the status line on a terminal.
struct Drawn<W: Write> {
    out: W,
    started: Instant,
}

impl<W: Write> Drawn<W> {
    fn draw(&mut self, status: &Status) {
        // `\r` and "erase to the end of the line" so a shorter text leaves nothing behind.
        let _ = write!(
            self.out,
            "\r{}\x1b[K",
            status.render(self.started.elapsed())
        );
        let _ = self.out.flush();
    }

    fn clear(&mut self) {
        let _ = write!(self.out, "\r\x1b[K");
        let _ = self.out.flush();
    }
}

/// Runs a plan with progress events, calling `on_progress` for each, with a live status line
/// on stderr when stderr is a terminal; returns the results and the trace (when the plan asked
/// for it).
///
/// # Errors
/// As [`PlanBuilder::run_with_progress`].
pub async fn run_with_status(
    plan: PlanBuilder,
    mut on_progress: impl FnMut(&Progress),
) -> Result<(BTreeMap<String, Value>, Option<PlanTrace>), Error> {
    let total = plan.steps().len();
    let mut drawn = std::io::stderr().is_terminal().then(|| Drawn {
        out: std::io::stderr(),
        started: Instant::now(),
    });
    let mut status = Status {
        total,
        ..Status::default()
    };
    let mut events = plan.stream().await?;
    let mut tick = tokio::time::interval(TICK);
    let outcome = loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = tick.tick(), if drawn.is_some() => {
                if let Some(d) = drawn.as_mut() {
                    d.draw(&status);
                }
                continue;
            }
        };
        match event {
            Some(Ok(PlanEvent::Progress(p))) => {
                status.done += 1;
                if status.plan.is_none() {
                    status.plan = p.plan.map(|id| id.to_string());
                }
                status.last = Some((p.step.clone(), p.worker.clone()));
                on_progress(&p);
                if let Some(d) = drawn.as_mut() {
                    d.draw(&status);
                }
            }
            Some(Ok(PlanEvent::Done(results))) => break Ok(results),
            Some(Err(e)) => break Err(e),
            None => break Err(Error::Closed),
        }
    };
    if let Some(d) = drawn.as_mut() {
        d.clear();
    }
    outcome.map(|results| (results, events.trace().cloned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_how_far_the_plan_is_and_never_wraps() {
        let mut status = Status {
            total: 10,
            ..Status::default()
        };
        assert_eq!(
            status.render(Duration::from_millis(1250)),
            "plan: 0/10 steps done, 1.2 s"
        );
        status.plan = Some("01JQ4Y5VJ7T0D8S3R5Y2M6W8XB".into());
        status.done = 3;
        status.last = Some(("c\x1b[31m".into(), "n1".into()));
        let line = status.render(Duration::from_secs(2));
        assert_eq!(
            line,
            "plan 01JQ4Y5VJ7T0D8S3R5Y2M6W8XB: 3/10 steps done, last c?[31m on n1, 2.0 s"
        );
        status.last = Some(("x".repeat(500), "n1".into()));
        assert_eq!(status.render(Duration::ZERO).chars().count(), MAX_WIDTH);
    }

    #[test]
    fn drawing_rewrites_one_line_in_place() {
        let mut d = Drawn {
            out: Vec::new(),
            started: Instant::now(),
        };
        let status = Status {
            total: 2,
            done: 1,
            ..Status::default()
        };
        d.draw(&status);
        d.clear();
        let text = String::from_utf8(d.out).unwrap_or_default();
        assert!(text.starts_with("\rplan: 1/2 steps done, "), "{text:?}");
        assert!(text.ends_with("\x1b[K\r\x1b[K"), "{text:?}");
        assert!(!text.contains('\n'));
    }
}
