//! The `cluster` and `functions` replies: how this broker sees its cluster and the catalogue
//! of what the cluster's workers can run.

use std::collections::{BTreeMap, BTreeSet};

use mpreg_protocol::peer::{Capability, MemberState, PeerEndpoints};
use mpreg_protocol::{ClusterMember, ClusterReply, FunctionEntry, FunctionsReply};

use super::Engine;

impl Engine {
    /// Every member, this broker included, by name.
    pub(super) fn cluster_reply(&self, id: u64) -> ClusterReply {
        let own = self.own_classes();
        let functions = |classes: &mut dyn Iterator<Item = &Capability>| -> Vec<String> {
            let set: BTreeSet<String> = classes.map(|c| c.fun.clone()).collect();
            set.into_iter().collect()
        };
        let (cluster, me, endpoints) = match &self.peers {
            Some(peers) => (
                peers.config.cluster.clone(),
                peers.config.me.to_string(),
                peers.config.endpoints.clone(),
            ),
            None => (
                String::new(),
                String::new(),
                PeerEndpoints {
                    client: self.config.client_endpoint.clone(),
                    worker: self.config.worker_endpoint.clone(),
                    event: self.config.exchange.events_endpoint.clone(),
                    ..PeerEndpoints::default()
                },
            ),
        };
        let mut members = vec![ClusterMember {
            name: self.config.name.clone(),
            incarnation: me,
            state: MemberState::Alive,
            endpoints,
            functions: functions(&mut own.iter()),
        }];
        if let Some(peers) = &self.peers {
            for (id, m) in peers.membership.members() {
                let classes = peers.catalogue.view(id);
                members.push(ClusterMember {
                    name: m.name.clone(),
                    incarnation: id.to_string(),
                    state: m.state,
                    endpoints: m.endpoints.clone(),
                    functions: functions(&mut classes.into_iter().flat_map(|v| v.classes.values())),
                });
            }
        }
        members.sort_by(|a, b| (&a.name, &a.incarnation).cmp(&(&b.name, &b.incarnation)));
        ClusterReply {
            id,
            cluster,
            self_name: self.config.name.clone(),
            members,
        }
    }

    /// The cluster's catalogue: this broker's workers and every live peer's.
    pub(super) fn functions_reply(&self, id: u64) -> FunctionsReply {
        #[derive(Default)]
        struct Entry {
            versions: BTreeSet<String>,
            resources: BTreeSet<Vec<String>>,
            brokers: BTreeSet<String>,
            capacity: u64,
        }
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        let mut add = |broker: &str, c: &Capability| {
            let e = entries.entry(c.fun.clone()).or_default();
            e.versions.insert(c.version.clone());
            e.resources.insert(c.resources.clone());
            e.brokers.insert(broker.to_string());
            e.capacity += u64::from(c.capacity);
        };
        for c in self.own_classes() {
            add(&self.config.name, &c);
        }
        if let Some(peers) = &self.peers {
            for (id, view) in peers.catalogue.views() {
                let Some(m) = peers
                    .membership
                    .get(id)
                    .filter(|m| m.state != MemberState::Dead)
                else {
                    continue;
                };
                for c in view.classes.values() {
                    add(&m.name, c);
                }
            }
        }
        FunctionsReply {
            id,
            functions: entries
                .into_iter()
                .map(|(fun, e)| FunctionEntry {
                    fun,
                    versions: e.versions.into_iter().collect(),
                    resources: e.resources.into_iter().collect(),
                    brokers: e.brokers.into_iter().collect(),
                    capacity: e.capacity,
                })
                .collect(),
        }
    }
}
