//! Who may connect and what they may do: the access file of a CURVE broker.
//!
//! The file (TOML) lists client keys, worker keys and peer keys (the other brokers of the
//! cluster) separately; a key is let onto a socket by the ZAP handler only when it is listed
//! for that socket's role, so a client key cannot register as a worker, nor a worker key join
//! the cluster through the peer and gossip sockets. Each client entry says which functions it
//! may call and which topics it may publish to and subscribe to; everything not granted is
//! denied (`404 access_denied`).
//!
//! ```toml
//! [[client]]
//! name = "alice"                    # shown in logs
//! key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"   # Z85 public key (or key_file = "alice.pub")
//! functions = ["echo", "train_*"]   # exact names, a trailing `*` for a prefix, "*" for all
//! publish = ["orders.#"]            # topics it may publish to (patterns)
//! subscribe = ["orders.#", "alerts.*"]  # its subscription patterns must stay within these
//!
//! [[worker]]
//! name = "gpu-1"
//! key = "..."
//!
//! [[peer]]                          # brokers of the cluster (peer and gossip sockets)
//! name = "cluster"
//! key_file = "broker.pub"
//! ```
//!
//! A broker connects to its peers as a CURVE client with its own key pair and expects them to
//! serve that same public key: the brokers of a cluster share one key pair (as their nodes and
//! clients already assume, with one server key for every broker), and each lists it as a
//! peer.

use std::collections::HashMap;
use std::path::Path;

use config::{Config, File, FileFormat};
use mpreg_protocol::ClientToBroker;
use mpreg_transport::{curve::load_public, Key};

use crate::quote::quote as truncate;
use serde::Deserialize;

/// What one client key may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientRules {
    /// Name shown in logs.
    pub name: String,
    /// Functions it may call: exact names, `prefix*`, or `*`.
    pub functions: Vec<String>,
    /// Topic patterns it may publish to.
    pub publish: Vec<String>,
    /// Patterns that must cover each of its subscription patterns.
    pub subscribe: Vec<String>,
}

impl ClientRules {
    /// May this client call `fun`?
    pub fn may_call(&self, fun: &str) -> bool {
        self.functions
            .iter()
            .any(|rule| match rule.strip_suffix('*') {
                Some(prefix) => fun.starts_with(prefix),
                None => rule == fun,
            })
    }

    /// May this client publish to `topic`?
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|rule| topic_matches(rule, topic))
    }

    /// May this client subscribe with `pattern` (is it covered by one of its rules)?
    pub fn may_subscribe(&self, pattern: &str) -> bool {
        self.subscribe
            .iter()
            .any(|rule| pattern_covers(rule, pattern))
    }
}

/// Why a request was refused (`404 access_denied`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// What was refused, naming the key.
    pub message: String,
    /// The step, for a plan.
    pub step: Option<String>,
    /// The function, for a plan.
    pub fun: Option<String>,
    /// Where in a batch.
    pub path: Option<String>,
}

impl Denied {
    fn new(message: String) -> Denied {
        Denied {
            message,
            step: None,
            fun: None,
            path: None,
        }
    }
}

/// The parsed access file, keyed by Z85 public key (the ZAP `User-Id`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessList {
    clients: HashMap<String, ClientRules>,
    workers: HashMap<String, String>,
    peers: HashMap<String, String>,
}

#[derive(Deserialize)]
struct FileEntry {
    #[serde(default)]
    name: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_file: Option<String>,
    #[serde(default)]
    functions: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
}

#[derive(Deserialize)]
struct AccessFile {
    #[serde(default)]
    client: Vec<FileEntry>,
    #[serde(default)]
    worker: Vec<FileEntry>,
    #[serde(default)]
    peer: Vec<FileEntry>,
}

/// The socket a ZAP request is about, from its domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The client ROUTER and the event XPUB: client keys.
    Client,
    /// The worker ROUTER: worker keys.
    Worker,
    /// The peer ROUTER and the gossip PUB: peer keys (the other brokers of the cluster).
    Peer,
}

/// ZAP domains the broker sets on its sockets.
pub const CLIENT_DOMAIN: &str = "mpreg-client";
/// ZAP domain of the worker socket.
pub const WORKER_DOMAIN: &str = "mpreg-worker";
/// ZAP domain of the event socket (subscribers are clients).
pub const EVENT_DOMAIN: &str = "mpreg-events";
/// ZAP domain of the peer ROUTER (the other brokers' links).
pub const PEER_DOMAIN: &str = "mpreg-peer";
/// ZAP domain of the gossip PUB (the other brokers' gossip SUBs).
pub const GOSSIP_DOMAIN: &str = "mpreg-gossip";

impl Role {
    /// The role a ZAP domain stands for.
    pub fn of_domain(domain: &[u8]) -> Option<Role> {
        match domain {
            d if d == CLIENT_DOMAIN.as_bytes() || d == EVENT_DOMAIN.as_bytes() => {
                Some(Role::Client)
            }
            d if d == WORKER_DOMAIN.as_bytes() => Some(Role::Worker),
            d if d == PEER_DOMAIN.as_bytes() || d == GOSSIP_DOMAIN.as_bytes() => Some(Role::Peer),
            _ => None,
        }
    }
}

impl AccessList {
    /// Reads and checks an access file; `key_file` paths are relative to the file's directory.
    pub fn load(path: &Path) -> Result<AccessList, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        AccessList::parse(&text, dir).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the TOML text of an access file.
    pub fn parse(text: &str, dir: &Path) -> Result<AccessList, String> {
        let file: AccessFile = Config::builder()
            .add_source(File::from_str(text, FileFormat::Toml))
            .build()
            .and_then(Config::try_deserialize)
            .map_err(|e| e.to_string())?;
        let key_of = |what: &str, i: usize, e: &FileEntry| -> Result<String, String> {
            let key = match (&e.key, &e.key_file) {
                (Some(k), None) => load_public(k),
                (None, Some(f)) => load_public(&dir.join(f).to_string_lossy()),
                _ => {
                    return Err(format!(
                        "{what}[{i}]: give exactly one of `key` or `key_file`"
                    ))
                }
            };
            key.map(|k| k.to_z85())
                .map_err(|err| format!("{what}[{i}] ({}): {err}", e.name))
        };
        let mut list = AccessList::default();
        for (i, e) in file.client.iter().enumerate() {
            let key = key_of("client", i, e)?;
            for p in e.publish.iter().chain(&e.subscribe) {
                if p.is_empty() {
                    return Err(format!("client[{i}] ({}): empty topic pattern", e.name));
                }
            }
            let rules = ClientRules {
                name: if e.name.is_empty() {
                    format!("client-{}", &key[..8])
                } else {
                    e.name.clone()
                },
                functions: e.functions.clone(),
                publish: e.publish.clone(),
                subscribe: e.subscribe.clone(),
            };
            if list.clients.insert(key, rules).is_some() {
                return Err(format!("client[{i}] ({}): key listed twice", e.name));
            }
        }
        for (i, e) in file.worker.iter().enumerate() {
            let key = key_of("worker", i, e)?;
            let name = if e.name.is_empty() {
                format!("worker-{}", &key[..8])
            } else {
                e.name.clone()
            };
            if list.workers.insert(key, name).is_some() {
                return Err(format!("worker[{i}] ({}): key listed twice", e.name));
            }
        }
        for (i, e) in file.peer.iter().enumerate() {
            let key = key_of("peer", i, e)?;
            let name = if e.name.is_empty() {
                format!("peer-{}", &key[..8])
            } else {
                e.name.clone()
            };
            if list.peers.insert(key, name).is_some() {
                return Err(format!("peer[{i}] ({}): key listed twice", e.name));
            }
        }
        Ok(list)
    }

    /// The ZAP verdict for a CURVE public key connecting in `role`: the `User-Id` (the key in
    /// Z85) when listed, else `None`.
    pub fn admit(&self, role: Role, key: &Key) -> Option<String> {
        let z85 = key.to_z85();
        let listed = match role {
            Role::Client => self.clients.contains_key(&z85),
            Role::Worker => self.workers.contains_key(&z85),
            Role::Peer => self.peers.contains_key(&z85),
        };
        listed.then_some(z85)
    }

    /// The rules of a client key (Z85), if it is listed.
    pub fn client(&self, user: &str) -> Option<&ClientRules> {
        self.clients.get(user)
    }

    /// The name of a worker key (Z85), if it is listed.
    pub fn worker(&self, user: &str) -> Option<&str> {
        self.workers.get(user).map(String::as_str)
    }

    /// The name of a peer key (Z85), if it is listed.
    pub fn peer(&self, user: &str) -> Option<&str> {
        self.peers.get(user).map(String::as_str)
    }

    /// Numbers of client and worker keys.
    pub fn len(&self) -> (usize, usize) {
        (self.clients.len(), self.workers.len())
    }

    /// Number of peer keys.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// True when no key is listed.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty() && self.workers.is_empty() && self.peers.is_empty()
    }

    /// Checks a client request of the key `user` (the ZAP `User-Id`; `None` if the
    /// connection has none) against the rules: why it is refused, if it is.
    pub fn check(&self, user: Option<&str>, request: &ClientToBroker) -> Option<Denied> {
        let deny = Denied::new;
        let Some(rules) = user.and_then(|u| self.client(u)) else {
            return Some(deny(
                "this key is not (or no longer) allowed as a client".into(),
            ));
        };
        match request {
            ClientToBroker::Plan(plan) => {
                if let Some(step) = plan.steps.iter().find(|s| !rules.may_call(&s.fun)) {
                    let mut denied = deny(format!(
                        "{} may not call `{}`",
                        rules.name,
                        truncate(&step.fun)
                    ));
                    denied.step = Some(step.name.clone());
                    denied.fun = Some(step.fun.clone());
                    return Some(denied);
                }
                match &plan.progress_topic {
                    Some(t) if !rules.may_publish(t) => Some(deny(format!(
                        "{} may not publish to {:?} (progress_topic)",
                        rules.name,
                        truncate(t)
                    ))),
                    _ => None,
                }
            }
            ClientToBroker::Subscribe(sub) => sub
                .patterns
                .iter()
                .find(|p| !rules.may_subscribe(p))
                .map(|p| {
                    deny(format!(
                        "{} may not subscribe to {:?}",
                        rules.name,
                        truncate(p)
                    ))
                }),
            ClientToBroker::Publish(publish) => (!rules.may_publish(&publish.topic)).then(|| {
                deny(format!(
                    "{} may not publish to {:?}",
                    rules.name,
                    truncate(&publish.topic)
                ))
            }),
            ClientToBroker::PublishBatch(batch) => batch
                .messages
                .iter()
                .enumerate()
                .find(|(_, m)| !rules.may_publish(&m.topic))
                .map(|(i, m)| {
                    let mut denied = deny(format!(
                        "{} may not publish to {:?}; nothing in the batch was published",
                        rules.name,
                        truncate(&m.topic)
                    ));
                    denied.path = Some(format!("messages[{i}].topic"));
                    denied
                }),
            // Dropping results by function needs the right to call it; by tag (which may
            // cover any function) the right to call every function (`*`).
            ClientToBroker::CacheInvalidate(inv) => {
                let (allowed, what) = match (&inv.fun, &inv.tag) {
                    (Some(fun), _) => (rules.may_call(fun), format!("`{}`", truncate(fun))),
                    (None, _) => (
                        rules.functions.iter().any(|r| r == "*"),
                        "every function (`*`), needed to invalidate by tag".to_string(),
                    ),
                };
                (!allowed).then(|| {
                    deny(format!(
                        "{} may not invalidate cached results of {what}",
                        rules.name
                    ))
                })
            }
            ClientToBroker::CacheStats(_)
            | ClientToBroker::Cancel(_)
            | ClientToBroker::Heartbeat(_)
            | ClientToBroker::Cluster(_)
            | ClientToBroker::Functions(_)
            | ClientToBroker::Ping(_)
            | ClientToBroker::Status(_)
            | ClientToBroker::Unsubscribe(_) => None,
        }
    }
}

/// Does `pattern` match `topic` (the exchange's rules, without a trie)? The words of a topic
/// are all literal, `*` and `#` included.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    covers(pattern, topic, false)
}

/// Does `rule` match every topic `pattern` matches? Decided word by word: a `#` in the rule
/// covers any run of pattern words (wildcards included), a `*` covers one literal word or `*`,
/// a literal covers only itself. Sound (never says yes wrongly); it may refuse a few exotic
/// equivalent forms such as rule `#.*` for pattern `*.#`, which are then denied.
pub fn pattern_covers(rule: &str, pattern: &str) -> bool {
    covers(rule, pattern, true)
}

/// `rule` against `words` (a topic, or a pattern when `wildcards`: then its `#` can only be
/// covered by a `#`).
fn covers(rule: &str, words: &str, wildcards: bool) -> bool {
    let r: Vec<&str> = rule.split('.').collect();
    let w: Vec<&str> = words.split('.').collect();
    // ok[i][j]: r[i..] covers w[j..]; filled from the end.
    let mut ok = vec![vec![false; w.len() + 1]; r.len() + 1];
    ok[r.len()][w.len()] = true;
    for i in (0..r.len()).rev() {
        for j in (0..=w.len()).rev() {
            let one = j < w.len() && ok[i + 1][j + 1];
            ok[i][j] = match r[i] {
                "#" => ok[i + 1][j] || (j < w.len() && ok[i][j + 1]),
                "*" => one && !(wildcards && w[j] == "#"),
                word => one && w[j] == word,
            };
        }
    }
    ok[0][0]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn functions_topics_and_patterns() {
        let rules = ClientRules {
            name: "a".into(),
            functions: vec!["echo".into(), "train_*".into()],
            publish: vec!["orders.#".into()],
            subscribe: vec!["orders.#".into(), "alerts.*".into()],
        };
        assert!(rules.may_call("echo") && rules.may_call("train_big"));
        assert!(!rules.may_call("echos") && !rules.may_call("sleep"));
        assert!(rules.may_publish("orders") && rules.may_publish("orders.1.eu"));
        assert!(!rules.may_publish("alerts.x") && !rules.may_publish("ordersx"));
        for ok in [
            "orders.#",
            "orders.*.eu",
            "orders.1",
            "alerts.x",
            "alerts.*",
        ] {
            assert!(rules.may_subscribe(ok), "{ok}");
        }
        for no in ["#", "*.#", "alerts.#", "alerts.*.x", "alerts", "orders*"] {
            assert!(!rules.may_subscribe(no), "{no}");
        }
        // In a topic `*` and `#` are literal words; in a pattern `#` needs a `#` to cover it.
        assert!(topic_matches("*", "#") && topic_matches("a.*", "a.*"));
        assert!(!pattern_covers("*", "#") && pattern_covers("*", "*"));
    }

    #[test]
    fn parse_rejects_bad_files() {
        let key = mpreg_transport::KeyPair::generate()
            .unwrap()
            .public
            .to_z85();
        let good = format!(
            "[[client]]\nname = \"a\"\nkey = \"{key}\"\nfunctions = [\"*\"]\n[[worker]]\nkey = \"{key}\"\n"
        );
        let list = AccessList::parse(&good, Path::new(".")).unwrap();
        assert_eq!(list.len(), (1, 1));
        let k = Key::from_z85(&key).unwrap();
        assert!(list.admit(Role::Client, &k).is_some());
        assert!(list.admit(Role::Worker, &k).is_some());
        assert!(
            list.admit(Role::Peer, &k).is_none(),
            "a client key is no peer"
        );
        let peers = format!("[[peer]]\nname = \"b\"\nkey = \"{key}\"\n");
        let list = AccessList::parse(&peers, Path::new(".")).unwrap();
        assert_eq!((list.len(), list.peer_count()), ((0, 0), 1));
        assert!(list.admit(Role::Peer, &k).is_some());
        assert!(list.admit(Role::Client, &k).is_none() && list.admit(Role::Worker, &k).is_none());
        assert_eq!(list.peer(&key), Some("b"));
        assert_eq!(Role::of_domain(PEER_DOMAIN.as_bytes()), Some(Role::Peer));
        assert_eq!(Role::of_domain(GOSSIP_DOMAIN.as_bytes()), Some(Role::Peer));
        for bad in [
            format!("[[peer]]\nkey = \"{key}\"\n[[peer]]\nkey = \"{key}\"\n"),
            "[[peer]]\nname = \"no key\"\n".to_string(),
            "[[client]]\nname = \"no key\"\n".to_string(),
            "[[client]]\nkey = \"short\"\n".to_string(),
            format!("[[client]]\nkey = \"{key}\"\n[[client]]\nkey = \"{key}\"\n"),
            format!("[[client]]\nkey = \"{key}\"\npublish = [\"\"]\n"),
            "not toml [".to_string(),
        ] {
            assert!(AccessList::parse(&bad, Path::new(".")).is_err(), "{bad}");
        }
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("*".to_string()),
            Just("#".to_string()),
            Just(String::new()),
        ]
    }

    fn pattern() -> impl Strategy<Value = String> {
        prop::collection::vec(word(), 1..5).prop_map(|w| w.join("."))
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("")], 1..6)
            .prop_map(|w| w.join("."))
    }

    proptest! {
        // Soundness: when a rule covers a pattern, every topic the pattern matches, the rule
        // matches too.
        #[test]
        fn covering_is_sound(rule in pattern(), pat in pattern(), topics in prop::collection::vec(topic(), 30)) {
            if pattern_covers(&rule, &pat) {
                for t in &topics {
                    prop_assert!(!topic_matches(&pat, t) || topic_matches(&rule, t), "{rule} {pat} {t}");
                }
            }
        }

        // A pattern covers itself, and `#` covers everything.
        #[test]
        fn covering_is_reflexive(pat in pattern()) {
            prop_assert!(pattern_covers(&pat, &pat));
            prop_assert!(pattern_covers("#", &pat));
        }

        // The matcher here agrees with the exchange's trie.
        #[test]
        fn topic_matches_agrees_with_the_trie(pat in pattern(), t in topic()) {
            let mut m = crate::matcher::Matcher::new();
            m.insert(&pat, 1);
            let mut hit = Vec::new();
            m.matches(&t, &mut hit);
            prop_assert_eq!(topic_matches(&pat, &t), !hit.is_empty());
        }
    }
}
