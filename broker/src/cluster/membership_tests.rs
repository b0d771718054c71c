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
fn a_dead_member_stays_dead_when_a_probe_of_it_times_out_later() {
    // Member 2 falls silent; member 1 probes it every period. Its suspicion runs out in the
    // same tick as an unanswered probe of it: that probe must not revive it as suspect (a
    // revived suspect dies again only a whole suspicion timeout later, and meanwhile the
    // rumour of it suspect goes round).
    let t0 = Instant::now();
    let mut net = Net::new(2, t0);
    net.join_all_via(0, t0);
    net.run(t0, t0 + Duration::from_secs(2), &mut |_, _, _| false);
    net.nodes[1].2 = false;
    let died = t0 + Duration::from_secs(2);
    let config = SwimConfig::default();
    // Noticed within two probe periods, then dead after the suspicion timeout.
    let bound = config.probe_interval * 2 + config.suspicion_timeout;
    let mut dead_at = None;
    for step in 1..=120u32 {
        let now = died + Duration::from_millis(50) * step;
        net.run(now - Duration::from_millis(50), now, &mut |_, _, _| false);
        match net.state(0, id(2)) {
            Some(MemberState::Dead) => {
                dead_at.get_or_insert(now - died);
            }
            other => assert!(dead_at.is_none(), "dead, then {other:?}"),
        }
    }
    let dead_at = dead_at.expect("member 2 declared dead");
    assert!(
        dead_at <= bound,
        "declared dead {dead_at:?} after it fell silent"
    );
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

#[test]
fn a_member_cut_off_and_declared_dead_comes_back_by_refuting_its_death() {
    let t0 = Instant::now();
    let mut net = Net::new(3, t0);
    net.join_all_via(0, t0);
    net.run(t0, t0 + Duration::from_secs(2), &mut |_, _, _| false);
    let cut = id(3);
    let later = t0 + Duration::from_secs(2);
    net.run(later, later + Duration::from_secs(6), &mut |a, b, _| {
        a == cut || b == cut
    });
    assert_eq!(net.state(0, cut), Some(MemberState::Dead));
    assert_eq!(net.state(2, id(1)), Some(MemberState::Dead), "both sides");
    // The heal: an introduction tells the cut member what member 1 believes of it.
    let healed = later + Duration::from_secs(6);
    let verdict = update_of(cut, net.nodes[0].1.get(cut).unwrap());
    net.nodes[2].1.apply(verdict, healed);
    let refutation = net.nodes[2].1.me();
    assert!(
        refutation.incarnation > 0,
        "refuted with a higher incarnation"
    );
    // An alive update at the old incarnation does not revive it; the refutation does.
    let mut stale = refutation.clone();
    stale.incarnation = 0;
    assert!(net.nodes[0].1.apply(stale, healed).is_empty());
    let actions = net.nodes[0].1.apply(refutation, healed);
    assert!(
        actions.contains(&Action::Connect(cut, endpoints(3))),
        "links again: {actions:?}"
    );
    assert_eq!(net.state(0, cut), Some(MemberState::Alive));
    // Member 1 is then refuted to member 3 the same way, and everyone agrees again.
    let mut one = net.nodes[0].1.me();
    one.state = MemberState::Dead;
    net.nodes[0].1.apply(one, healed);
    let one = net.nodes[0].1.me();
    net.nodes[2].1.apply(one.clone(), healed);
    net.nodes[1].1.apply(one, healed);
    net.run(healed, healed + Duration::from_secs(4), &mut |_, _, _| {
        false
    });
    for k in 0..3 {
        for (_, m) in net.nodes[k].1.members() {
            assert_eq!(m.state, MemberState::Alive, "observer {k} sees {}", m.name);
        }
    }
}

#[test]
fn own_verdicts_are_announced_to_every_member_at_once() {
    let t0 = Instant::now();
    let mut m = Membership::new(
        id(1),
        "b1".into(),
        endpoints(1),
        SwimConfig::default(),
        1,
        t0,
    );
    for n in 2..=5 {
        let mut other = Membership::new(
            id(n),
            format!("b{n}"),
            endpoints(n),
            SwimConfig::default(),
            1,
            t0,
        );
        m.apply(other.me(), t0);
        let _ = other.on_tick(t0);
    }
    let actions = m.suspect(id(3), t0);
    let pinged: Vec<BrokerId> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(to, Swim::Ping { seq, updates })
                if *seq == ANNOUNCEMENT_SEQ
                    && updates
                        .iter()
                        .any(|u| u.broker == id(3) && u.state == MemberState::Suspect) =>
            {
                Some(*to)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        pinged,
        vec![id(2), id(3), id(4), id(5)],
        "the suspect too, so it can refute"
    );
    assert_eq!(m.get(id(3)).unwrap().state, MemberState::Suspect);
    assert!(m.suspect(id(3), t0).is_empty(), "already suspect");
    // An acknowledgement of an announcement settles no probe.
    let ack = Swim::Ack {
        seq: ANNOUNCEMENT_SEQ,
        target: None,
        updates: vec![],
    };
    assert!(m.on_message(id(2), ack, t0).is_empty());
}

#[test]
fn old_rumours_are_not_piggybacked() {
    let t0 = Instant::now();
    let config = SwimConfig::default();
    let ttl = config.rumour_ttl;
    let mut m = Membership::new(id(1), "b1".into(), endpoints(1), config, 1, t0);
    let other = Membership::new(
        id(2),
        "b2".into(),
        endpoints(2),
        SwimConfig::default(),
        2,
        t0,
    );
    m.apply(other.me(), t0);
    // Fresh: the join rumour rides on the ack of a ping.
    let ping = Swim::Ping {
        seq: 1,
        updates: vec![],
    };
    let fresh = m.on_message(id(2), ping.clone(), t0 + ttl / 2);
    assert!(fresh
        .iter()
        .any(|a| matches!(a, Action::Send(_, Swim::Ack { updates, .. }) if !updates.is_empty())));
    let mut m = Membership::new(
        id(1),
        "b1".into(),
        endpoints(1),
        SwimConfig::default(),
        1,
        t0,
    );
    m.apply(other.me(), t0);
    let old = m.on_message(id(2), ping, t0 + ttl + Duration::from_millis(1));
    assert!(
        old.iter().all(
            |a| !matches!(a, Action::Send(_, Swim::Ack { updates, .. }) if !updates.is_empty())
        ),
        "{old:?}"
    );
}
