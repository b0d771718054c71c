//! `mpreg pub` and `mpreg sub`, and the lines they print.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value as Json};

use mpreg::client::Client;
use mpreg::error::Error;
use mpreg::json::to_json;
use mpreg::subscription::{Delivery, Lagging, Message, SubscribeOptions};
use mpreg::{PublishOptions, Value};

use super::emit;

/// `mpreg pub`: always waits for the broker's confirmation (so the message is routed before
/// the process exits, and a rejected topic is reported); prints `{"matched":N}` only when
/// `print_matched`.
pub(crate) async fn publish(
    client: &Client,
    topic: String,
    payload: Value,
    headers: Vec<(String, String)>,
    print_matched: bool,
    out: &mut impl Write,
) -> Result<(), Error> {
    let mut options = PublishOptions::default().with_confirm(true);
    options.headers.extend(headers);
    let published = client
        .publish_with(topic, payload, options)
        .await?
        .ok_or_else(|| Error::Invalid("a confirmed publish came back unconfirmed".into()))?;
    if print_matched {
        emit(out, &json!({ "matched": published.matched }).to_string())?;
    }
    Ok(())
}

/// `mpreg sub`: prints one line per message until `count` messages arrived (success), or
/// until `deadline` (success without `count`, [`Error::MessagesTimeout`] with it), or forever.
pub(crate) async fn subscribe(
    client: &Client,
    patterns: Vec<String>,
    count: Option<u64>,
    backlog: bool,
    deadline: Option<(Instant, Duration)>,
    out: &mut impl Write,
) -> Result<(), Error> {
    let options = SubscribeOptions::default().with_backlog(backlog);
    let mut subscription = client.subscribe_with(patterns, options).await?;
    let mut received = 0;
    while count != Some(received) {
        let next = match deadline {
            Some((at, after)) => {
                match tokio::time::timeout_at(at.into(), subscription.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        return match count {
                            Some(expected) => Err(Error::MessagesTimeout {
                                expected,
                                received,
                                after,
                            }),
                            None => Ok(()),
                        }
                    }
                }
            }
            None => subscription.next().await,
        };
        match next.ok_or(Error::Closed)?? {
            Delivery::Message(message) => {
                emit(out, &message_line(&message))?;
                received += 1;
            }
            Delivery::Lagging(lagging) => notice(&lagging_line(&lagging)),
            Delivery::ConnectionLost => notice(&connection_lost_line()),
            Delivery::Resubscribed {
                id,
                backlog,
                broker,
                last_message_id,
                down_for,
            } => notice(&resubscribed_line(
                &id,
                backlog,
                &broker,
                last_message_id.as_deref(),
                down_for,
            )),
            // A notice this version of the CLI does not know: nothing to print.
            _ => {}
        }
    }
    Ok(())
}

/// Writes a notice line on stderr.
fn notice(line: &str) {
    // Diagnostics only: if stderr is gone there is no one to tell.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The line `mpreg sub` prints for a message: `{"topic", "payload", "headers", "seq", "id"}`,
/// in that order.
///
/// ```
/// use std::collections::BTreeMap;
/// let message = mpreg::Message {
///     topic: "orders.1.eu".into(),
///     headers: BTreeMap::from([("k".to_string(), "v".to_string())]),
///     payload: mpreg::Value::from(3),
///     seq: 1,
///     id: "01J".into(),
///     retained: false,
/// };
/// assert_eq!(
///     mpreg_cli::message_line(&message),
///     r#"{"topic":"orders.1.eu","payload":3,"headers":{"k":"v"},"seq":1,"id":"01J"}"#
/// );
/// ```
pub fn message_line(message: &Message) -> String {
    let headers: Map<String, Json> = message
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Json::String(v.clone())))
        .collect();
    json!({
        "topic": message.topic,
        "payload": to_json(&message.payload),
        "headers": headers,
        "seq": message.seq,
        "id": message.id,
    })
    .to_string()
}

/// The line `mpreg sub` prints on stderr for a lagging notice:
/// `{"lagging": {"dropped", "dropped_total", "source"}}`.
pub fn lagging_line(lagging: &Lagging) -> String {
    json!({
        "lagging": {
            "dropped": lagging.dropped,
            "dropped_total": lagging.dropped_total,
            "source": lagging.source.as_str(),
        }
    })
    .to_string()
}

/// The line `mpreg sub` prints on stderr when the connection to the broker is lost:
/// `{"connection_lost": {"message"}}`. The subscription is made again once it is back.
///
/// ```
/// assert!(mpreg_cli::connection_lost_line().starts_with(r#"{"connection_lost":{"message":"#));
/// ```
pub fn connection_lost_line() -> String {
    json!({
        "connection_lost": {
            "message": "the connection to the broker was lost; subscribing again once it is back",
        }
    })
    .to_string()
}

/// The line `mpreg sub` prints on stderr once its subscription was made again after a lost
/// connection: `{"resubscribed": {"sub", "backlog", "broker", "after", "down_ms",
/// "message"}}`: the new token, the retained messages announced, the broker it is now on,
/// the id of the last message delivered before (`null`: none), and how long it was down.
///
/// ```
/// use std::time::Duration;
/// let line = mpreg_cli::resubscribed_line("s01", 0, "tcp://b:7400", Some("01J"), Duration::from_millis(120));
/// assert!(line.starts_with(r#"{"resubscribed":{"sub":"s01","backlog":0,"broker":"tcp://b:7400","after":"01J","down_ms":120,"#));
/// ```
pub fn resubscribed_line(
    sub: &str,
    backlog: u64,
    broker: &str,
    after: Option<&str>,
    down_for: Duration,
) -> String {
    json!({
        "resubscribed": {
            "sub": sub,
            "backlog": backlog,
            "broker": broker,
            "after": after,
            "down_ms": u64::try_from(down_for.as_millis()).unwrap_or(u64::MAX),
            "message": "subscribed again: messages published after `after` while the \
                        connection was down may be missing, and seq starts again at 1",
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use mpreg::LagSource;
    use std::collections::BTreeMap;

    #[test]
    fn lines() {
        let message = Message {
            topic: "a.b".into(),
            headers: BTreeMap::new(),
            payload: Value::Binary(vec![1, 2]),
            seq: 7,
            id: "X".into(),
            retained: true,
        };
        assert_eq!(
            message_line(&message),
            r#"{"topic":"a.b","payload":{"$bin":"0102"},"headers":{},"seq":7,"id":"X"}"#
        );
        let lagging = Lagging {
            dropped: 2,
            dropped_total: 5,
            source: LagSource::Broker,
        };
        assert_eq!(
            lagging_line(&lagging),
            r#"{"lagging":{"dropped":2,"dropped_total":5,"source":"broker"}}"#
        );
        let lost: Json = serde_json::from_str(&connection_lost_line()).unwrap();
        assert!(lost["connection_lost"]["message"].is_string());
        assert_eq!(
            resubscribed_line("s01", 3, "tcp://h:1", None, Duration::from_micros(2500)),
            r#"{"resubscribed":{"sub":"s01","backlog":3,"broker":"tcp://h:1","after":null,"down_ms":2,"message":"subscribed again: messages published after `after` while the connection was down may be missing, and seq starts again at 1"}}"#
        );
    }
}
