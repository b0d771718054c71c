//! Membership tests: a few members on a network that loses, cuts and restarts.

use super::*;

fn id(n: u128) -> BrokerId {
    BrokerId(ulid::Ulid(n))
}

fn endpoints(n: u128) -> PeerEndpoints {
    PeerEndpoints {
        peer: format!("tcp://b{n}:7403"),
        ..PeerEndpoints::default()
    }
}

/// `n` members on a network that delivers at once, except what `drop` refuses
/// (sender, receiver, message number).
struct Net {
    nodes: Vec<(BrokerId, Membership, bool)>,
    sent: u64,
}

impl Net {
    fn new(n: u128, now: Instant) -> Net {
        let nodes = (1..=n)
            .map(|i| {
                let m = Membership::new(
                    id(i),
                    format!("b{i}"),
                    endpoints(i),
                    SwimConfig::default(),
                    i as u64,
                    now,
                );
                (id(i), m, true)
            })
            .collect();
        Net { nodes, sent: 0 }
    }

    fn index(&self, who: BrokerId) -> Option<usize> {
        self.nodes.iter().position(|(i, _, _)| *i == who)
    }

    /// Everyone hears of `seed` (as if told by `hello`), and the seed of everyone.
    fn join_all_via(&mut self, seed: usize, now: Instant) {
        let seed_update = self.nodes[seed].1.me();
        let all: Vec<MemberUpdate> = self.nodes.iter().map(|(_, m, _)| m.me()).collect();
        for (k, (_, m, _)) in self.nodes.iter_mut().enumerate() {
            if k != seed {
                m.apply(seed_update.clone(), now);
            }
        }
        for u in all {
            if u.broker != seed_update.broker {
                self.nodes[seed].1.apply(u, now);
            }
        }
    }

    fn run(
        &mut self,
        from: Instant,
        until: Instant,
        drop: &mut dyn FnMut(BrokerId, BrokerId, u64) -> bool,
    ) {
        let mut now = from;
        while now < until {
            now += Duration::from_millis(50);
            let mut queue: VecDeque<(BrokerId, Action)> = VecDeque::new();
            for (who, m, alive) in self.nodes.iter_mut() {
                if *alive {
                    queue.extend(m.on_tick(now).into_iter().map(|a| (*who, a)));
                }
            }
            while let Some((from, action)) = queue.pop_front() {
                let Action::Send(to, message) = action else {
                    continue;
                };
                self.sent += 1;
                if drop(from, to, self.sent) {
                    continue;
                }
                let Some(k) = self.index(to) else { continue };
                if !self.nodes[k].2 {
                    continue;
                }
                let out = self.nodes[k].1.on_message(from, message, now);
                queue.extend(out.into_iter().map(|a| (to, a)));
            }
        }
    }

    fn state(&self, observer: usize, of: BrokerId) -> Option<MemberState> {
        self.nodes[observer].1.get(of).map(|m| m.state)
    }
}

#[test]
fn members_learn_of_each_other_through_one_seed() {
    let t0 = Instant::now();
    let mut net = Net::new(6, t0);
    net.join_all_via(0, t0);
    net.run(t0, t0 + Duration::from_secs(5), &mut |_, _, _| false);
    for k in 0..6 {
        let known: Vec<BrokerId> = net.nodes[k].1.members().map(|(i, _)| i).collect();
        assert_eq!(known.len(), 5, "member {k} knows {known:?}");
        assert!(net.nodes[k]
            .1
            .members()
            .all(|(_, m)| m.state == MemberState::Alive));
    }
}

#[test]
fn a_dead_member_is_declared_dead_by_all_within_bounded_time() {
    let t0 = Instant::now();
    let mut net = Net::new(5, t0);
    net.join_all_via(0, t0);
    net.run(t0, t0 + Duration::from_secs(3), &mut |_, _, _| false);
    net.nodes[4].2 = false;
    let died = t0 + Duration::from_secs(3);
    // Each member probes everyone within one round (4 probe periods), then suspicion.
    net.run(died, died + Duration::from_secs(5), &mut |_, _, _| false);
    for k in 0..4 {
        assert_eq!(net.state(k, id(5)), Some(MemberState::Dead), "observer {k}");
    }
}

#[test]
fn loss_alone_does_not_kill_anyone() {
    let t0 = Instant::now();
    let mut net = Net::new(5, t0);
    net.join_all_via(0, t0);
    // One message in five lost, everywhere, for a minute of simulated time.
    let mut drop = |_: BrokerId, _: BrokerId, n: u64| n.is_multiple_of(5);
    net.run(t0, t0 + Duration::from_secs(60), &mut drop);
    for k in 0..5 {
        for (_, m) in net.nodes[k].1.members() {
            assert_ne!(m.state, MemberState::Dead, "observer {k} killed {}", m.name);
        }
    }
}

#[test]
fn a_partitioned_member_is_dead_and_a_restart_is_a_new_member() {
    let t0 = Instant::now();
    let mut net = Net::new(4, t0);
    net.join_all_via(0, t0);
    net.run(t0, t0 + Duration::from_secs(2), &mut |_, _, _| false);
    // Member 4 is cut off from everyone, both ways.
    let cut = id(4);
    let later = t0 + Duration::from_secs(2);
    net.run(later, later + Duration::from_secs(6), &mut |a, b, _| {
        a == cut || b == cut
    });
    assert_eq!(net.state(0, cut), Some(MemberState::Dead));
    // It comes back as a new incarnation on the same endpoint: the old id stays dead and
    // the new one is alive everywhere.
    let reborn = Membership::new(
        id(40),
        "b4".into(),
        endpoints(4),
        SwimConfig::default(),
        40,
        later,
    );
    net.nodes[3] = (id(40), reborn, true);
    let again = later + Duration::from_secs(6);
    net.join_all_via(0, again);
    net.run(again, again + Duration::from_secs(5), &mut |_, _, _| false);
    for k in 0..3 {
        assert_eq!(
            net.state(k, id(40)),
            Some(MemberState::Alive),
            "observer {k}"
        );
        assert_eq!(net.state(k, cut), Some(MemberState::Dead), "observer {k}");
    }
}

#[test]
fn a_suspicion_of_oneself_is_refuted() {
    let t0 = Instant::now();
    let mut m = Membership::new(
        id(1),
        "b1".into(),
        endpoints(1),
        SwimConfig::default(),
        1,
        t0,
    );
    let mut about_me = m.me();
    about_me.state = MemberState::Suspect;
    m.apply(about_me, t0);
    assert_eq!(m.me().incarnation, 1, "refuted with a higher incarnation");
}
