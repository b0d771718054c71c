//! [`PlanBuilder`]: named steps, plan options, and the three ways to run a plan (`run`,
//! `stream`, `run_with_progress`).

use std::collections::BTreeMap;
use std::time::Duration;

use mpreg_protocol::{
    BrokerToClient, ClientToBroker, PlanId, PlanRequest, PlanTrace, Progress, Step,
};
use tokio::sync::mpsc;

use crate::client::Client;
use crate::error::Error;
use crate::pending_reply::{unexpected, PendingReply};
use crate::Value;

/// A plan under construction, from [`Client::plan`].
///
/// Steps are added with [`step`](PlanBuilder::step) or [`step_with`](PlanBuilder::step_with);
/// [`kwarg`](PlanBuilder::kwarg), [`locs`](PlanBuilder::locs),
/// [`step_timeout`](PlanBuilder::step_timeout) and [`retries`](PlanBuilder::retries) change the
/// step added last. A string argument equal to another step's name (or `name.path`) is replaced
/// by that step's result before the step runs.
///
/// ```no_run
/// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
/// use std::time::Duration;
/// use mpreg::args;
///
/// let results = client
///     .plan()
///     .step("rows", "load", args!["2024-01"])
///     .locs(["dataset-a"])
///     .step("model", "train", args!["rows"])
///     .kwarg("epochs", 3)
///     .locs(["gpu"])
///     .deadline(Duration::from_secs(60))
///     .run()
///     .await?;
/// let model = &results["model"];
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a plan does nothing until it is run"]
pub struct PlanBuilder {
    client: Client,
    steps: Vec<Step>,
    deadline: Option<Duration>,
    all_results: bool,
    progress: bool,
    progress_topic: Option<String>,
    trace: bool,
    /// The first misuse of the builder (a step option before any step), reported by `run`.
    misuse: Option<String>,
}

/// A plan's results with its trace, from [`PlanBuilder::run_traced`].
#[derive(Debug, Clone, PartialEq)]
pub struct Traced {
    /// Results by step name, as [`PlanBuilder::run`] returns them.
    pub results: BTreeMap<String, Value>,
    /// The id the broker gave the plan (its trace id; `None` from brokers before it existed).
    pub plan: Option<PlanId>,
    /// Where and when each step ran (`None` from a broker that does not trace).
    pub trace: Option<PlanTrace>,
}

/// What a [`PlanStream`] yields: progress events, then the results.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanEvent {
    /// One step finished.
    Progress(Progress),
    /// The plan finished: results by step name (the sinks', or every step's with
    /// [`PlanBuilder::all_results`]).
    Done(BTreeMap<String, Value>),
}

impl PlanBuilder {
    pub(crate) fn new(client: Client) -> Self {
        PlanBuilder {
            client,
            steps: Vec::new(),
            deadline: None,
            all_results: false,
            progress: false,
            progress_topic: None,
            trace: false,
            misuse: None,
        }
    }

    /// Adds a step: call `fun` with positional `args`; its result is known as `name`.
    pub fn step(self, name: impl Into<String>, fun: impl Into<String>, args: Vec<Value>) -> Self {
        self.step_with(Step::new(name, fun, args))
    }

    /// Adds a step given in full (kwargs, locs, timeout, retries).
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// use mpreg::{args, Step};
    /// let mut step = Step::new("fetch", "load", args!["key"]);
    /// step.retries = Some(0);
    /// let results = client.plan().step_with(step).run().await?;
    /// # Ok(()) }
    /// ```
    pub fn step_with(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// Sets a keyword argument of the last step added.
    pub fn kwarg(self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        let key = key.into();
        let value = value.into();
        self.on_last_step("kwarg", move |step| {
            step.kwargs.insert(key, value);
        })
    }

    /// Requires the last step added to run on a worker holding every one of these resources.
    pub fn locs<I, S>(self, locs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let locs: Vec<String> = locs.into_iter().map(Into::into).collect();
        self.on_last_step("locs", move |step| step.locs.extend(locs))
    }

    /// Limits how long the last step added may run on its worker.
    pub fn step_timeout(self, timeout: Duration) -> Self {
        self.on_last_step("step_timeout", move |step| {
            step.timeout_ms = Some(millis(timeout));
        })
    }

    /// Asks that the last step added run only on workers whose version of its function
    /// satisfies `requirement` (Cargo's syntax: `">=1.2, <2"`, `"^1.4"`, `"=2.0.1"`); a
    /// function registered without a version counts as `0.0.0`. No worker in a matching
    /// version: `300 no_route`; an invalid requirement: `200 invalid_plan`.
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// use mpreg::args;
    /// let r = client.plan().step("fit", "train", args![]).version(">=1.2, <2").run().await?;
    /// # Ok(()) }
    /// ```
    pub fn version(self, requirement: impl Into<String>) -> Self {
        let requirement = requirement.into();
        self.on_last_step("version", move |step| step.version = Some(requirement))
    }

    /// How the last step added uses the broker's result cache (only functions a worker
    /// declared cacheable are ever cached): [`CacheMode::Use`](crate::CacheMode::Use) (the
    /// default) answers from the cache when it can, `Bypass` always runs the call and stores
    /// nothing, `Refresh` runs it and replaces the cached result.
    pub fn cache(self, mode: crate::CacheMode) -> Self {
        self.on_last_step("cache", move |step| step.cache = Some(mode))
    }

    /// Sets how many times the last step added is re-dispatched if its worker dies.
    pub fn retries(self, retries: u32) -> Self {
        self.on_last_step("retries", move |step| step.retries = Some(retries))
    }

    /// The plan's deadline: the broker fails it with `plan_timeout` (and cancels its tasks)
    /// once this has passed; the client waits this long plus
    /// [`ClientOptions::deadline_margin`](crate::ClientOptions::deadline_margin).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Returns every step's result, not only the sinks'.
    pub fn all_results(mut self) -> Self {
        self.all_results = true;
        self
    }

    /// Asks the broker for a progress event per finished step. [`run`](PlanBuilder::run)
    /// ignores them; [`stream`](PlanBuilder::stream) and
    /// [`run_with_progress`](PlanBuilder::run_with_progress) (which set this themselves)
    /// deliver them.
    pub fn progress(mut self) -> Self {
        self.progress = true;
        self
    }

    /// Also publish each finished step's progress event to `topic` on the broker's topic
    /// exchange (payload: the progress event as a map).
    pub fn progress_topic(mut self, topic: impl Into<String>) -> Self {
        self.progress_topic = Some(topic.into());
        self
    }

    /// Asks the broker for the plan's trace: where each step ran (broker, worker) and when it
    /// became ready, was dispatched, started and finished, in microseconds since the broker
    /// accepted the plan ([`PlanTrace`]). [`run_traced`](PlanBuilder::run_traced) sets it and
    /// returns the trace; with [`stream`](PlanBuilder::stream), read it from
    /// [`PlanStream::trace`]; when the plan fails, the trace of the steps that finished is in
    /// [`RemoteError::trace`](crate::RemoteError::trace).
    pub fn trace(mut self) -> Self {
        self.trace = true;
        self
    }

    /// The steps so far.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The request this builder sends, with request id `id`.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the builder was misused (a step option before any step).
    pub fn to_request(&self, id: u64) -> Result<PlanRequest, Error> {
        self.request_of(id, self.steps.clone(), self.progress_topic.clone())
    }

    /// [`to_request`](PlanBuilder::to_request) for a builder about to be sent: its steps are
    /// moved into the request, not copied.
    fn take_request(&mut self, id: u64) -> Result<PlanRequest, Error> {
        let (steps, topic) = (std::mem::take(&mut self.steps), self.progress_topic.take());
        self.request_of(id, steps, topic)
    }

    fn request_of(
        &self,
        id: u64,
        steps: Vec<Step>,
        progress_topic: Option<String>,
    ) -> Result<PlanRequest, Error> {
        if let Some(misuse) = &self.misuse {
            return Err(Error::Invalid(misuse.clone()));
        }
        Ok(PlanRequest {
            id,
            steps,
            deadline_ms: self.deadline.map(millis),
            all_results: self.all_results,
            progress: self.progress,
            progress_topic,
            plan: None,
            trace: self.trace,
        })
    }

    /// Runs the plan and returns its results by step name: the sinks' (steps no other step
    /// references), or every step's with [`all_results`](PlanBuilder::all_results).
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// use mpreg::args;
    /// let results = client
    ///     .plan()
    ///     .step("first", "echo", args!["hi there!"])
    ///     .step("second", "echo", args!["first"])
    ///     .step("third", "echos", args!["first", "second", "AND ME TOO"])
    ///     .run()
    ///     .await?;
    /// assert_eq!(results.len(), 1); // only `third` is a sink
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// - [`Error::Remote`]: the broker rejected or failed the plan (`plan_cycle`, `no_route`,
    ///   `step_failed` with the step, function and worker, `plan_timeout`, ...); results of
    ///   steps that finished are in [`RemoteError::partial`](crate::RemoteError::partial).
    /// - [`Error::Timeout`]: no reply within the deadline plus margin, or the request timeout;
    ///   the plan is cancelled at the broker.
    /// - [`Error::ConnectionLost`] (904): the connection to the broker broke while the plan was
    ///   in flight (the broker died, restarted or went silent), reported at once; whether it
    ///   ran is unknown. Not with another broker to move to
    ///   ([`Client::connect_any`](crate::Client::connect_any)): the plan is then sent there
    ///   under its plan id instead.
    /// - [`Error::TooLarge`] (104): the encoded plan is over the broker's `max_message_bytes`;
    ///   nothing was sent.
    /// - [`Error::Invalid`]: the builder was misused.
    /// - [`Error::Closed`]: the client was closed (its plans in flight are cancelled).
    pub async fn run(self) -> Result<BTreeMap<String, Value>, Error> {
        let pending = self.send(None).await?;
        plan_results(pending.wait().await?).map(|(results, _)| results)
    }

    /// Runs the plan with its trace (see [`trace`](PlanBuilder::trace)) and returns both.
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// use mpreg::args;
    /// let traced = client.plan().step("a", "echo", args![1]).run_traced().await?;
    /// for step in traced.trace.map(|t| t.steps).unwrap_or_default() {
    ///     println!("{} ran on {}/{} in {:?} us", step.step, step.broker, step.worker,
    ///         step.started_us.map(|s| step.finished_us - s));
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`run`](PlanBuilder::run); a [`RemoteError`](crate::RemoteError) of the plan carries
    /// the trace of the steps that finished.
    pub async fn run_traced(mut self) -> Result<Traced, Error> {
        self.trace = true;
        let pending = self.send(None).await?;
        match pending.wait().await? {
            BrokerToClient::Result(result) => Ok(Traced {
                results: result.results,
                plan: result.plan,
                trace: result.trace.map(|t| *t),
            }),
            BrokerToClient::Error(e) => Err(e.into()),
            other => Err(unexpected("result", &other)),
        }
    }

    /// Sends the plan with progress on, and returns a stream of its events: one
    /// [`PlanEvent::Progress`] per finished step, then [`PlanEvent::Done`] with the results (or
    /// the error), then `None`. Dropping the stream early cancels the plan.
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// use mpreg::{args, PlanEvent};
    /// let mut events = client.plan().step("a", "echo", args![1]).stream().await?;
    /// while let Some(event) = events.next().await {
    ///     match event? {
    ///         PlanEvent::Progress(p) => println!("{} done on {}", p.step, p.worker),
    ///         PlanEvent::Done(results) => println!("{results:?}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Invalid`] or [`Error::Closed`] when the plan could not be sent; failures of the
    /// plan itself come through the stream.
    pub async fn stream(mut self) -> Result<PlanStream, Error> {
        self.progress = true;
        // The broker sends at most one event per step, so this never fills unless it
        // misbehaves; the reactor drops (and counts) anything beyond.
        let (tx, rx) = mpsc::channel(self.steps.len().max(1));
        let pending = self.send(Some(tx)).await?;
        Ok(PlanStream {
            progress: rx,
            pending: Some(pending),
            trace: None,
        })
    }

    /// Runs the plan with progress on, calling `on_progress` for each finished step as it
    /// finishes, and returns the results as [`run`](PlanBuilder::run) does.
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// use mpreg::args;
    /// let results = client
    ///     .plan()
    ///     .step("a", "sleep", args![0.1])
    ///     .run_with_progress(|p| eprintln!("{} took {} us", p.step, p.elapsed_us))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`run`](PlanBuilder::run).
    pub async fn run_with_progress(
        self,
        mut on_progress: impl FnMut(Progress),
    ) -> Result<BTreeMap<String, Value>, Error> {
        let mut events = self.stream().await?;
        while let Some(event) = events.next().await {
            match event? {
                PlanEvent::Progress(progress) => on_progress(progress),
                PlanEvent::Done(results) => return Ok(results),
            }
        }
        Err(Error::Closed)
    }

    async fn send(
        mut self,
        progress: Option<mpsc::Sender<Progress>>,
    ) -> Result<PendingReply, Error> {
        let request = self.take_request(self.client.next_id())?;
        let options = self.client.options();
        let wait = match self.deadline {
            Some(deadline) => deadline.saturating_add(options.deadline_margin),
            None => options.request_timeout,
        };
        self.client
            .request(ClientToBroker::Plan(request), wait, progress)
            .await
    }

    fn on_last_step(mut self, what: &str, change: impl FnOnce(&mut Step)) -> Self {
        match self.steps.last_mut() {
            Some(step) => change(step),
            None => {
                if self.misuse.is_none() {
                    self.misuse = Some(format!("`{what}` was called before any step was added"));
                }
            }
        }
        self
    }
}

/// The events of a running plan, from [`PlanBuilder::stream`].
#[derive(Debug)]
#[must_use = "dropping the stream cancels the plan"]
pub struct PlanStream {
    progress: mpsc::Receiver<Progress>,
    pending: Option<PendingReply>,
    trace: Option<PlanTrace>,
}

impl PlanStream {
    /// The next event: progress events in the order steps finished, then the results or the
    /// plan's error, then `None`.
    pub async fn next(&mut self) -> Option<Result<PlanEvent, Error>> {
        // The connection drops the progress sender when the plan's reply arrives, so the channel
        // closes exactly after the last event that preceded the reply.
        if self.pending.is_some() {
            if let Some(progress) = self.progress.recv().await {
                return Some(Ok(PlanEvent::Progress(progress)));
            }
        }
        let pending = self.pending.take()?;
        Some(
            pending
                .wait()
                .await
                .and_then(plan_results)
                .map(|(results, trace)| {
                    self.trace = trace;
                    PlanEvent::Done(results)
                }),
        )
    }

    /// The plan's trace, once [`PlanEvent::Done`] came, when the plan asked for it
    /// ([`PlanBuilder::trace`]).
    pub fn trace(&self) -> Option<&PlanTrace> {
        self.trace.as_ref()
    }
}

type PlanOutcome = (BTreeMap<String, Value>, Option<PlanTrace>);

fn plan_results(reply: BrokerToClient) -> Result<PlanOutcome, Error> {
    match reply {
        BrokerToClient::Result(result) => Ok((result.results, result.trace.map(|t| *t))),
        BrokerToClient::Error(e) => Err(e.into()),
        other => Err(unexpected("result", &other)),
    }
}

fn millis(d: Duration) -> u64 {
    // Rounded up, so a non-zero duration never becomes "no time at all".
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::{args, ClientOptions};

    /// A client whose broker never answers: enough to build plans (nothing is sent).
    fn offline() -> Client {
        Client::open("tcp://127.0.0.1:9", ClientOptions::default()).unwrap()
    }

    #[tokio::test]
    async fn steps_are_built_in_order_with_their_options() {
        let request = offline()
            .plan()
            .step("first", "echo", args!["hi there!"])
            .step("second", "echos", args!["first", 2, 1.5, true])
            .kwarg("sep", "-")
            .kwarg("n", 3u8)
            .locs(["gpu", "eu"])
            .locs(vec!["big".to_string()])
            .step_timeout(Duration::from_micros(1500))
            .retries(2)
            .deadline(Duration::from_secs(2))
            .all_results()
            .progress()
            .trace()
            .to_request(7)
            .unwrap();
        assert_eq!(request.id, 7);
        assert_eq!(request.deadline_ms, Some(2000));
        assert!(request.all_results && request.progress && request.trace);
        let [first, second] = &request.steps[..] else {
            panic!("two steps expected: {:?}", request.steps);
        };
        assert_eq!(first, &Step::new("first", "echo", args!["hi there!"]));
        assert_eq!(second.name, "second");
        assert_eq!(second.fun, "echos");
        assert_eq!(
            second.args,
            vec![
                Value::from("first"),
                Value::from(2),
                Value::F64(1.5),
                Value::Boolean(true)
            ]
        );
        assert_eq!(second.kwargs.len(), 2);
        assert_eq!(second.kwargs["sep"], Value::from("-"));
        assert_eq!(second.kwargs["n"], Value::from(3));
        assert_eq!(second.locs, ["gpu", "eu", "big"]);
        assert_eq!(second.timeout_ms, Some(2));
        assert_eq!(second.retries, Some(2));
    }

    #[tokio::test]
    async fn defaults_leave_options_to_the_broker() {
        let request = offline()
            .plan()
            .step("a", "f", args![])
            .to_request(1)
            .unwrap();
        assert_eq!(request.deadline_ms, None);
        assert!(!request.all_results && !request.progress && !request.trace);
        assert_eq!(request.steps[0].timeout_ms, None);
        assert_eq!(request.steps[0].retries, None);
        assert!(request.steps[0].kwargs.is_empty() && request.steps[0].locs.is_empty());
    }

    #[tokio::test]
    async fn step_options_before_any_step_are_reported() {
        let builder = offline().plan().kwarg("k", 1).step("a", "f", args![]);
        let err = builder.to_request(1).unwrap_err();
        assert_eq!(err.code(), 902);
        assert!(err.message().contains("`kwarg`"), "{err}");
        // `run` reports it without sending anything.
        let err = builder.run().await.unwrap_err();
        assert_eq!(err.kind(), "invalid_input");
    }

    #[test]
    fn millis_round_up() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_nanos(1)), 1);
        assert_eq!(millis(Duration::from_millis(250)), 250);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
