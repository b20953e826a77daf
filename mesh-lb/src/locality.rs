//! Locality load balancing: priorities (failover), locality weights (distribute), and
//! Envoy's priority load with overprovisioning and panic.
//!
//! * **Priorities** follow Istio's `applyLocalityFailover`: relative to the client's
//!   locality, endpoints in the same region/zone/subzone get priority 0, same region/zone 1,
//!   same region 2, other regions 3; when a `failover` entry names the client's region, only
//!   its `to` region stays at 3 and every other region drops to 4. With `failoverPriority`,
//!   the number of leading labels an endpoint shares with the client decides first
//!   (`priority = len − matched`), and with `failover` also set the locality priority is
//!   added as `label_priority × 5 + locality_priority`, as Istio does. Priorities are then
//!   made consecutive.
//! * **Distribute** follows Istio's `applyLocalityWeights`: the first entry whose `from`
//!   matches the client applies; each `to` pattern's weight is shared among the localities
//!   it matches in proportion to their endpoints' weights (rounded up); localities no
//!   pattern matches get no traffic.
//! * **Priority load** is Envoy's: a priority's health is
//!   `min(100, overprovisioning × healthy / total)` (factor 1.4); load goes to priorities in
//!   order, each taking `health × 100 / min(100, Σ health)` of what remains. A priority whose
//!   healthy share is under the panic threshold balances over all its endpoints; when every
//!   priority panics, load follows endpoint counts.

use mesh_core::locality::Locality;
use mesh_core::model::networking::{LocalityDistribute, LocalityFailover};
use mesh_core::selector::Labels;

use crate::policy::LocalityMode;

/// Where an endpoint is, as locality balancing sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place<'a> {
    pub(crate) locality: &'a Locality,
    pub(crate) labels: &'a Labels,
    pub(crate) network: Option<&'a str>,
    pub(crate) weight: u32,
}

/// The client (this workload).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Client<'a> {
    pub(crate) locality: &'a Locality,
    pub(crate) labels: &'a Labels,
}

/// Endpoints arranged in priority levels of locality groups.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layout {
    /// Levels by priority (0 first); each a list of groups.
    pub(crate) levels: Vec<Vec<GroupLayout>>,
    /// Whether group weights apply (distribute); otherwise each level has one group.
    pub(crate) weighted: bool,
}

/// A locality group of a level.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupLayout {
    pub(crate) hosts: Vec<usize>,
    pub(crate) weight: u32,
}

/// Per-priority load and panic state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PriorityLoad {
    /// Percent of requests per priority, summing to 100.
    pub(crate) load: Vec<u32>,
    /// Whether the priority balances over all its endpoints, healthy or not.
    pub(crate) panic: Vec<bool>,
}

const REGION_LABEL: &str = "topology.kubernetes.io/region";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
const NETWORK_LABEL: &str = "topology.istio.io/network";

/// Istio's `LocalityMatch`: `region[/zone[/subzone]]` where `*` or an omitted part matches
/// anything (a `*` region still requires the zone to match when one is given).
pub(crate) fn locality_match(l: &Locality, pattern: &str) -> bool {
    let mut it = pattern.splitn(3, '/');
    let r = it.next().unwrap_or("");
    let z = it.next().unwrap_or("");
    let s = it.next().unwrap_or("");
    (r == "*" || r == l.region)
        && (z.is_empty() || z == "*" || z == l.zone)
        && (s.is_empty() || s == "*" || s == l.subzone)
}

/// Istio's `util.LbPriority` with the `failover` rule applied.
fn locality_priority(client: &Locality, ep: &Locality, failover: &[LocalityFailover]) -> u32 {
    let p = if client.region == ep.region {
        if client.zone == ep.zone {
            if client.subzone == ep.subzone { 0 } else { 1 }
        } else {
            2
        }
    } else {
        3
    };
    match failover.iter().find(|f| f.from == client.region) {
        Some(f) if p == 3 && ep.region != f.to => 4,
        _ => p,
    }
}

fn topology_value<'a>(
    key: &str,
    labels: &'a Labels,
    locality: &'a Locality,
    network: Option<&'a str>,
) -> Option<&'a str> {
    if let Some(v) = labels.get(key) {
        return Some(v.as_str());
    }
    let v = match key {
        REGION_LABEL => locality.region.as_str(),
        ZONE_LABEL => locality.zone.as_str(),
        SUBZONE_LABEL => locality.subzone.as_str(),
        NETWORK_LABEL => network?,
        _ => return None,
    };
    (!v.is_empty()).then_some(v)
}

/// Istio's `failoverPriority` match: `len − (number of leading keys whose values agree)`.
/// A `key=value` entry compares the endpoint's `key` with `value` instead of the client's
/// own value (Istio 1.20, istio/istio#39111: an explicit value for the label).
fn label_priority(client: &Client<'_>, ep: &Place<'_>, keys: &[String]) -> u32 {
    let mut matched = 0u32;
    for key in keys {
        let (key, mine) = match key.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (
                key.as_str(),
                topology_value(key, client.labels, client.locality, None),
            ),
        };
        let theirs = topology_value(key, ep.labels, ep.locality, ep.network);
        match (mine, theirs) {
            (Some(a), Some(b)) if a == b => matched += 1,
            _ => break,
        }
    }
    keys.len() as u32 - matched
}

/// Arranges `places` into priority levels and locality groups for `client`.
pub(crate) fn layout(places: &[Place<'_>], client: &Client<'_>, mode: &LocalityMode) -> Layout {
    match mode {
        LocalityMode::Off => Layout {
            levels: vec![vec![GroupLayout {
                hosts: (0..places.len()).collect(),
                weight: 1,
            }]],
            weighted: false,
        },
        LocalityMode::Failover {
            failover,
            failover_priority,
        } => {
            let prio: Vec<u32> = places
                .iter()
                .map(|p| {
                    let loc = locality_priority(client.locality, p.locality, failover);
                    if failover_priority.is_empty() {
                        loc
                    } else if failover.is_empty() {
                        label_priority(client, p, failover_priority)
                    } else {
                        label_priority(client, p, failover_priority) * 5 + loc
                    }
                })
                .collect();
            let mut distinct: Vec<u32> = prio.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let mut levels = vec![
                vec![GroupLayout {
                    hosts: Vec::new(),
                    weight: 1
                }];
                distinct.len()
            ];
            for (i, p) in prio.iter().enumerate() {
                if let Ok(level) = distinct.binary_search(p) {
                    levels[level][0].hosts.push(i);
                }
            }
            Layout {
                levels,
                weighted: false,
            }
        }
        LocalityMode::Distribute(entries) => match entries
            .iter()
            .find(|d| locality_match(client.locality, &d.from))
        {
            Some(d) => distribute(places, d),
            None => layout(places, client, &LocalityMode::Off),
        },
    }
}

fn distribute(places: &[Place<'_>], d: &LocalityDistribute) -> Layout {
    // localities in first-seen order, with their endpoints and summed weights
    let mut groups: Vec<(&Locality, Vec<usize>, u64)> = Vec::new();
    for (i, p) in places.iter().enumerate() {
        match groups.iter_mut().find(|g| g.0 == p.locality) {
            Some(g) => {
                g.1.push(i);
                g.2 += u64::from(p.weight);
            }
            None => groups.push((p.locality, vec![i], u64::from(p.weight))),
        }
    }
    let mut weights: Vec<Option<u32>> = vec![None; groups.len()];
    let mut unmatched: Vec<bool> = vec![true; groups.len()];
    for (pattern, w) in &d.to {
        let matching: Vec<usize> = (0..groups.len())
            .filter(|&g| unmatched[g] && locality_match(groups[g].0, pattern))
            .collect();
        let total: u64 = matching.iter().map(|&g| groups[g].2).sum();
        for g in matching {
            unmatched[g] = false;
            if total > 0 && *w > 0 {
                let share = (groups[g].2 * u64::from(*w)).div_ceil(total);
                weights[g] = Some(u32::try_from(share).unwrap_or(u32::MAX));
            }
        }
    }
    let level: Vec<GroupLayout> = groups
        .into_iter()
        .zip(weights)
        .filter_map(|((_, hosts, _), w)| Some(GroupLayout { hosts, weight: w? }))
        .collect();
    Layout {
        levels: vec![level],
        weighted: true,
    }
}

/// Each priority's health, as Envoy computes it: `min(100, overprovisioning × healthy /
/// total)` (0 for an empty priority).
pub(crate) fn priority_health(counts: &[(usize, usize)], overprovisioning: u32) -> Vec<u32> {
    counts
        .iter()
        .map(|&(h, t)| {
            if t == 0 {
                0
            } else {
                (u64::from(overprovisioning) * h as u64 / t as u64).min(100) as u32
            }
        })
        .collect()
}

/// The level a draw `r` in `0..100` falls in under the priority load recomputed without
/// the priorities in `excluded` (a bit set), as Envoy's `previous_priorities` retry
/// priority does (`adjustForAttemptedPriorities`): the remaining priorities' health,
/// normalised to at most 100, shared out in priority order, the rest to the first one that
/// has any. `None` when no remaining priority has any health: then the unmodified load
/// applies (Envoy's fallback). No allocation: it runs on retries, in the balancer.
pub(crate) fn level_excluding(health: &[u32], excluded: u64, r: u32) -> Option<usize> {
    let avail = |i: usize| {
        let out = i < 64 && excluded & (1 << i) != 0;
        if out { 0 } else { health[i] }
    };
    let total = (0..health.len()).map(avail).sum::<u32>().min(100);
    if total == 0 {
        return None;
    }
    let load = |i: usize, remaining: u32| (avail(i) * 100 / total).min(remaining);
    let mut remaining = 100u32;
    for i in 0..health.len() {
        remaining -= load(i, remaining);
    }
    let first = (0..health.len()).find(|&i| avail(i) > 0)?;
    let (mut acc, mut left) = (0u32, 100u32);
    for i in 0..health.len() {
        let l = load(i, left);
        left -= l;
        acc += l + if i == first { remaining } else { 0 };
        if r < acc {
            return Some(i);
        }
    }
    Some(first)
}

/// Envoy's priority load from per-priority `(healthy, total)` endpoint counts.
/// `None` when no endpoint can take traffic (no endpoint at all, or none healthy with panic
/// disabled).
pub(crate) fn priority_load(
    counts: &[(usize, usize)],
    overprovisioning: u32,
    panic_threshold: u32,
) -> Option<PriorityLoad> {
    let total_hosts: usize = counts.iter().map(|c| c.1).sum();
    if counts.is_empty() || total_hosts == 0 {
        return None;
    }
    let health = priority_health(counts, overprovisioning);
    let normalized: u32 = health.iter().sum::<u32>().min(100);
    let panic: Vec<bool> = counts
        .iter()
        .map(|&(h, t)| {
            if normalized == 100 {
                return false;
            }
            let pct = if t == 0 {
                0.0
            } else {
                100.0 * h as f64 / t as f64
            };
            pct < f64::from(panic_threshold.min(100))
        })
        .collect();
    if panic.iter().all(|p| *p) {
        // total panic: load by endpoint count, the remainder to the first non-empty level
        let mut load: Vec<u32> = counts
            .iter()
            .map(|c| (100 * c.1 / total_hosts) as u32)
            .collect();
        let rest = 100 - load.iter().sum::<u32>();
        if let Some(first) = counts.iter().position(|c| c.1 > 0) {
            load[first] += rest;
        }
        return Some(PriorityLoad { load, panic });
    }
    if normalized == 0 {
        return None;
    }
    let mut remaining = 100u32;
    let mut load = Vec::with_capacity(counts.len());
    for h in &health {
        let l = (h * 100 / normalized).min(remaining);
        remaining -= l;
        load.push(l);
    }
    if let Some(first) = health.iter().position(|h| *h > 0) {
        load[first] += remaining;
    }
    Some(PriorityLoad { load, panic })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> Locality {
        Locality::parse(s)
    }

    #[test]
    fn priority_load_matches_envoys_examples() {
        // arch_overview/upstream/load_balancing/priority: P0 healthy%, P1 healthy% → load
        let l = |p0: usize, p1: usize| priority_load(&[(p0, 100), (p1, 100)], 140, 0).unwrap().load;
        assert_eq!(l(100, 100), vec![100, 0]);
        assert_eq!(l(72, 100), vec![100, 0]);
        assert_eq!(l(71, 100), vec![99, 1]);
        assert_eq!(l(50, 100), vec![70, 30]);
        assert_eq!(l(25, 100), vec![35, 65]);
        assert_eq!(l(0, 100), vec![0, 100]);
        // three levels: 20%, 20%, 100% → 28, 28, 44
        let three = priority_load(&[(20, 100), (20, 100), (100, 100)], 140, 0)
            .unwrap()
            .load;
        assert_eq!(three, vec![28, 28, 44]);
    }

    #[test]
    fn panic_and_total_panic() {
        // Envoy's default threshold 50%: P0 at 40% healthy panics only if the total is < 100
        let p = priority_load(&[(40, 100), (0, 100)], 140, 50).unwrap();
        assert_eq!(p.panic, vec![true, true]);
        assert_eq!(p.load, vec![50, 50], "total panic: load by host count");
        let p = priority_load(&[(40, 100), (100, 100)], 140, 50).unwrap();
        assert_eq!(
            p.panic,
            vec![false, false],
            "normalized health is 100: nobody panics"
        );
        // panic disabled (Istio's minHealthPercent 0 with outlier detection): nothing left
        assert_eq!(priority_load(&[(0, 3)], 140, 0), None);
        assert_eq!(priority_load(&[(0, 3)], 140, 50).unwrap().panic, vec![true]);
        assert_eq!(priority_load(&[], 140, 50), None);
    }

    #[test]
    fn excluding_priorities_shares_the_load_among_the_others() {
        // P0 healthy (100), P1 half (70), P2 healthy (100)
        let health = [100, 70, 100];
        let level = |excluded, r| level_excluding(&health, excluded, r);
        // nothing excluded: P0 takes everything (the unmodified load)
        assert!((0..100).all(|r| level(0, r) == Some(0)));
        // P0 excluded: P1 70%, P2 the remaining 30%
        assert!((0..70).all(|r| level(0b1, r) == Some(1)));
        assert!((70..100).all(|r| level(0b1, r) == Some(2)));
        // P0 and P1 excluded: P2
        assert!((0..100).all(|r| level(0b11, r) == Some(2)));
        // everything excluded, or nothing healthy left: the unmodified load
        assert_eq!(level(0b111, 5), None);
        assert_eq!(level_excluding(&[100, 0], 0b1, 5), None);
        // low health everywhere: normalised over what is left (40 + 20 → 2/3, 1/3)
        let low = [40, 20, 50];
        assert!((0..66).all(|r| level_excluding(&low, 0b100, r) == Some(0)));
        assert!((67..100).all(|r| level_excluding(&low, 0b100, r) == Some(1)));
    }

    #[test]
    fn locality_priorities_follow_istio() {
        let client = loc("region1/zone1/sub1");
        let none: Vec<LocalityFailover> = vec![];
        assert_eq!(
            locality_priority(&client, &loc("region1/zone1/sub1"), &none),
            0
        );
        assert_eq!(
            locality_priority(&client, &loc("region1/zone1/sub2"), &none),
            1
        );
        assert_eq!(locality_priority(&client, &loc("region1/zone2"), &none), 2);
        assert_eq!(locality_priority(&client, &loc("region2/zone1"), &none), 3);
        let fo = vec![LocalityFailover {
            from: "region1".into(),
            to: "region3".into(),
        }];
        assert_eq!(locality_priority(&client, &loc("region3/zone9"), &fo), 3);
        assert_eq!(locality_priority(&client, &loc("region2/zone1"), &fo), 4);
    }

    #[test]
    fn failover_priority_labels() {
        let labels = |kv: &[(&str, &str)]| -> Labels {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let me = labels(&[("topology.istio.io/network", "n1")]);
        let client_loc = loc("r1/z1");
        let client = Client {
            locality: &client_loc,
            labels: &me,
        };
        let keys = vec![
            NETWORK_LABEL.to_string(),
            REGION_LABEL.to_string(),
            ZONE_LABEL.to_string(),
        ];
        let none = Labels::new();
        let (l1, l2, l3) = (loc("r1/z1"), loc("r1/z2"), loc("r2/z1"));
        let places = [
            Place {
                locality: &l1,
                labels: &none,
                network: Some("n1"),
                weight: 1,
            }, // all 3 match → 0
            Place {
                locality: &l2,
                labels: &none,
                network: Some("n1"),
                weight: 1,
            }, // 2 → 1
            Place {
                locality: &l3,
                labels: &none,
                network: Some("n1"),
                weight: 1,
            }, // 1 → 2
            Place {
                locality: &l1,
                labels: &none,
                network: Some("n2"),
                weight: 1,
            }, // 0 → 3
        ];
        let mode = LocalityMode::Failover {
            failover: vec![],
            failover_priority: keys,
        };
        let lay = layout(&places, &client, &mode);
        let hosts: Vec<Vec<usize>> = lay.levels.iter().map(|l| l[0].hosts.clone()).collect();
        assert_eq!(hosts, vec![vec![0], vec![1], vec![2], vec![3]]);

        // `key=value`: the network n2 is preferred whatever the client's own network
        let mode = LocalityMode::Failover {
            failover: vec![],
            failover_priority: vec![format!("{NETWORK_LABEL}=n2"), REGION_LABEL.to_string()],
        };
        let lay = layout(&places, &client, &mode);
        let hosts: Vec<Vec<usize>> = lay.levels.iter().map(|l| l[0].hosts.clone()).collect();
        assert_eq!(hosts[0], vec![3], "n2 and r1 first: {hosts:?}");
    }

    #[test]
    fn locality_patterns() {
        let l = loc("us-west/zone1/sub1");
        assert!(locality_match(&l, "us-west/*"));
        assert!(locality_match(&l, "us-west"));
        assert!(locality_match(&l, "us-west/zone1/*"));
        assert!(locality_match(&l, "*"));
        assert!(locality_match(&l, "*/zone1"));
        assert!(!locality_match(&l, "*/zone2"));
        assert!(!locality_match(&l, "us-east/*"));
    }

    #[test]
    fn distribute_shares_a_pattern_by_endpoint_weight() {
        let (a, b, c) = (loc("r1/z1"), loc("r1/z2"), loc("r2/z1"));
        let none = Labels::new();
        let places = [
            Place {
                locality: &a,
                labels: &none,
                network: None,
                weight: 1,
            },
            Place {
                locality: &b,
                labels: &none,
                network: None,
                weight: 1,
            },
            Place {
                locality: &b,
                labels: &none,
                network: None,
                weight: 1,
            },
            Place {
                locality: &c,
                labels: &none,
                network: None,
                weight: 1,
            },
        ];
        let d = LocalityDistribute {
            from: "r1/z1/*".into(),
            to: [("r1/*".to_string(), 90u32), ("r3/*".to_string(), 10u32)]
                .into_iter()
                .collect(),
        };
        let me = loc("r1/z1/s1");
        let lay = layout(
            &places,
            &Client {
                locality: &me,
                labels: &none,
            },
            &LocalityMode::Distribute(vec![d]),
        );
        assert!(lay.weighted);
        // r1/z1 has 1 of 3 endpoints of r1/*: ceil(90/3) = 30; r1/z2: ceil(180/3) = 60;
        // r2/z1 matches nothing: no traffic
        assert_eq!(
            lay.levels,
            vec![vec![
                GroupLayout {
                    hosts: vec![0],
                    weight: 30
                },
                GroupLayout {
                    hosts: vec![1, 2],
                    weight: 60
                }
            ]]
        );
    }
}
