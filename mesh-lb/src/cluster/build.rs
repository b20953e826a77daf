//! Building a [`Cluster`]: the usable endpoints of a (host, subset, port), grouped by
//! locality and priority, with their weights.

use super::weights::edf_schedule;
use super::*;
use mesh_core::ext::EndpointMeta;
use mesh_core::identity::SpiffeId;
use mesh_core::model::networking::ClientTlsMode;

// === impl Cluster ===

impl Cluster {
    pub(crate) fn build(input: BuildInput<'_>) -> Cluster {
        let BuildInput {
            name,
            subset,
            subset_labels,
            service,
            port,
            endpoints,
            policy,
            now,
            trust_domain,
            ..
        } = input;
        let http2 = Protocol::of(port).is_http2() || policy.h2_upgrade;

        // the subset's endpoints with their addresses, first occurrence of an address wins
        let mut chosen: Vec<(SocketAddr, &Arc<Endpoint>)> =
            Vec::with_capacity(endpoints.endpoints.len());
        for e in &endpoints.endpoints {
            if subset_labels.is_some_and(|l| !labels_match(l, &e.endpoint.labels)) {
                continue;
            }
            let p = service.endpoint_port(&e.endpoint, port);
            if p == 0 {
                continue;
            }
            let addr = SocketAddr::new(e.ip, p);
            if !chosen.iter().any(|c| c.0 == addr) {
                chosen.push((addr, &e.endpoint));
            }
        }
        let addrs: Vec<SocketAddr> = chosen.iter().map(|c| c.0).collect();
        let limits = Arc::new(ClusterLimits::new(
            policy.limits,
            input.registry.counters(&name),
        ));
        let states = input.registry.states(&name, &addrs, now);
        let hosts: Box<[Host]> = chosen
            .iter()
            .zip(states)
            .map(|((addr, ep), state)| {
                let health = input.health.cell(&HealthKey {
                    cluster: name.clone(),
                    addr: *addr,
                });
                // Istio's auto mTLS (`pilot/pkg/networking/core/cluster_tls.go`): to
                // endpoints with a sidecar unless the DestinationRule says otherwise
                let sidecar = ep.labels.get(TLS_MODE_LABEL).is_some_and(|v| v == "istio");
                let istio_tls = match policy.tls_mode {
                    None => sidecar,
                    Some(ClientTlsMode::IstioMutual) => true,
                    Some(_) => false,
                };
                let namespace = ep
                    .workload_entry
                    .as_ref()
                    .map_or(service.namespace.as_str(), |w| w.namespace.as_str());
                let identity = ep
                    .service_account
                    .as_deref()
                    .map(|sa| Arc::new(SpiffeId::new(trust_domain, namespace, sa)));
                let meta = Arc::new(EndpointMeta {
                    labels: ep.labels.clone(),
                    namespace: Arc::from(namespace),
                    workload: ep
                        .workload_entry
                        .as_ref()
                        .map(|w| Arc::from(w.name.as_str())),
                });
                let selected = SelectedEndpoint {
                    addr: *addr,
                    http2,
                    service_account: ep.service_account.as_deref().map(Arc::from),
                    istio_tls,
                    identity,
                    meta: Some(meta),
                };
                let cluster = UpstreamCluster {
                    name: name.clone(),
                    health: health.clone(),
                    pool: policy.pool,
                    outlier: policy.outlier.clone(),
                    limits: Some(limits.clone()),
                };
                Host {
                    addr: *addr,
                    weight: ep.weight.max(1),
                    state,
                    health,
                    upstream: SelectedUpstream::new(selected, cluster),
                }
            })
            .collect();

        let places: Vec<Place<'_>> = chosen
            .iter()
            .map(|(_, ep)| Place {
                locality: &ep.locality,
                labels: &ep.labels,
                network: ep.network.as_deref(),
                weight: ep.weight.max(1),
            })
            .collect();
        let client = Client {
            locality: input.client_locality,
            labels: input.client_labels,
        };
        let lay = layout(&places, &client, &policy.locality);

        let counts: Vec<(usize, usize)> = lay
            .levels
            .iter()
            .map(|groups| {
                let all = groups.iter().flat_map(|g| &g.hosts);
                let total = all.clone().count();
                let healthy = all.filter(|&&i| hosts[i].health.is_healthy()).count();
                (healthy, total)
            })
            .collect();
        let load = priority_load(&counts, input.overprovisioning, policy.panic_threshold);
        let health = priority_health(&counts, input.overprovisioning);

        // warm-up factors, and when to look again
        let mut refresh_at: Option<Instant> = None;
        let factors: Vec<f64> = match &policy.warmup {
            Some(w) => hosts
                .iter()
                .map(|h| {
                    let f = h.state.warmup_factor(now, w);
                    if f < 1.0 {
                        let step = (w.duration / 20).max(Duration::from_millis(100));
                        let at = now + step;
                        refresh_at = Some(refresh_at.map_or(at, |r| r.min(at)));
                    }
                    f
                })
                .collect(),
            None => vec![1.0; hosts.len()],
        };
        let host_weight = |i: usize| f64::from(hosts[i].weight) * factors[i];

        let rng = SharedRng::new(Some(input.seed));
        let mut levels = Vec::new();
        let mut cumulative = Vec::new();
        if let Some(load) = load {
            let mut acc = 0u32;
            for (li, groups) in lay.levels.iter().enumerate() {
                acc += load.load[li];
                cumulative.push(acc);
                let panic = load.panic[li];
                let mut built: Vec<(Group, f64)> = Vec::new();
                for g in groups {
                    let use_hosts: Vec<u32> = g
                        .hosts
                        .iter()
                        .filter(|&&i| panic || hosts[i].health.is_healthy())
                        .map(|&i| i as u32)
                        .collect();
                    if use_hosts.is_empty() {
                        continue;
                    }
                    // Envoy: a locality's weight shrinks with its availability (overprovisioned)
                    let avail = if panic {
                        1.0
                    } else {
                        (f64::from(input.overprovisioning) / 100.0 * use_hosts.len() as f64
                            / g.hosts.len() as f64)
                            .min(1.0)
                    };
                    let gw = f64::from(g.weight) * avail;
                    if gw <= 0.0 {
                        continue;
                    }
                    let weights: Vec<f64> =
                        use_hosts.iter().map(|&i| host_weight(i as usize)).collect();
                    let equal = weights
                        .windows(2)
                        .all(|w| (w[0] - w[1]).abs() < f64::EPSILON);
                    let weights = match policy.algorithm {
                        _ if equal => Weights::Equal,
                        Algorithm::RoundRobin => {
                            Weights::Schedule(edf_schedule(&use_hosts, &weights))
                        }
                        Algorithm::LeastRequest => {
                            Weights::Sampled(Alias::new(&weights), weights.into())
                        }
                        _ => Weights::Equal,
                    };
                    let start = rng.below(use_hosts.len().max(1));
                    built.push((
                        Group {
                            hosts: use_hosts.into(),
                            cursor: AtomicUsize::new(start),
                            weights,
                        },
                        gw,
                    ));
                }
                let table = match policy.algorithm {
                    Algorithm::RingHash { .. } | Algorithm::Maglev { .. } => {
                        let total_gw: f64 = built.iter().map(|b| b.1).sum();
                        let mut t_hosts = Vec::new();
                        let mut t_addrs = Vec::new();
                        let mut t_weights = Vec::new();
                        for (g, gw) in &built {
                            let sum: f64 = g.hosts.iter().map(|&i| host_weight(i as usize)).sum();
                            for &i in g.hosts.iter() {
                                let w = host_weight(i as usize);
                                t_hosts.push(i);
                                t_addrs.push(hosts[i as usize].addr);
                                t_weights.push(if lay.weighted {
                                    w / sum * gw / total_gw
                                } else {
                                    w
                                });
                            }
                        }
                        let t = match policy.algorithm {
                            Algorithm::Maglev { table_size } => {
                                HashTable::maglev(&t_addrs, &t_weights, table_size)
                            }
                            Algorithm::RingHash { min_ring_size } => {
                                HashTable::ring(&t_addrs, &t_weights, min_ring_size)
                            }
                            _ => None,
                        };
                        t.map(|t| (t, t_hosts.into_boxed_slice()))
                    }
                    _ => None,
                };
                let group_alias = (built.len() > 1)
                    .then(|| Alias::new(&built.iter().map(|b| b.1).collect::<Vec<_>>()));
                levels.push(Level {
                    groups: built.into_iter().map(|b| b.0).collect(),
                    group_alias,
                    table,
                });
            }
        }
        Cluster {
            subset,
            version: input.version,
            refresh_at,
            hosts,
            levels: levels.into(),
            cumulative: cumulative.into(),
            health: health.into(),
            algorithm: policy.algorithm,
            hash: policy.hash,
            rng,
            ewma_default_rtt_ns: input.ewma_default_rtt.as_nanos() as f64,
        }
    }
}
