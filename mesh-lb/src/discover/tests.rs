use super::*;
use mesh_core::compile::compile;
use mesh_core::load::Loader;
use std::sync::Mutex;

/// Answers from a table, with the TTL of `ttls` (none when missing); a missing name
/// fails. Counts the calls, in all and per name.
#[derive(Debug, Default)]
pub(crate) struct FakeResolver {
    pub(crate) answers: Mutex<HashMap<String, Vec<IpAddr>>>,
    pub(crate) ttls: Mutex<HashMap<String, Duration>>,
    pub(crate) calls: AtomicU64,
    pub(crate) calls_per_name: Mutex<HashMap<String, u64>>,
}

impl FakeResolver {
    fn answer(&self, host: &str, ips: &[&str], ttl: Option<Duration>) {
        let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        self.answers.lock().unwrap().insert(host.into(), ips);
        match ttl {
            Some(ttl) => self.ttls.lock().unwrap().insert(host.into(), ttl),
            None => self.ttls.lock().unwrap().remove(host),
        };
    }

    fn calls_for(&self, host: &str) -> u64 {
        let calls = self.calls_per_name.lock().unwrap();
        calls.get(host).copied().unwrap_or(0)
    }
}

impl Resolver for FakeResolver {
    fn resolve(&self, host: &str) -> ResolveFuture {
        self.calls.fetch_add(1, Ordering::Relaxed);
        *self
            .calls_per_name
            .lock()
            .unwrap()
            .entry(host.into())
            .or_default() += 1;
        let r = self.answers.lock().unwrap().get(host).cloned();
        Box::pin(async move { r.ok_or_else(|| io::Error::other("NXDOMAIN")) })
    }

    fn resolve_with_ttl(&self, host: &str) -> ResolvedFuture {
        let ttl = self.ttls.lock().unwrap().get(host).copied();
        let addrs = self.resolve(host);
        Box::pin(async move {
            Ok(Resolved {
                addrs: addrs.await?,
                ttl,
            })
        })
    }
}

/// Lets spawned tasks run to their next await (time is paused: nothing moves the clock).
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// Moves the paused clock to `at` (relative to `start`) and lets the tasks run.
async fn at(start: Instant, at: Duration) {
    tokio::time::sleep_until(start + at).await;
    settle().await;
}

/// A resolver and a source on it resolving the names of `DNS`, spawned with `run`; the
/// instant it started.
async fn running(
    fake: &Arc<FakeResolver>,
) -> (Arc<DnsDiscover>, tokio::task::JoinHandle<()>, Instant) {
    let dns = Arc::new(DnsDiscover::new(fake.clone()));
    dns.set_snapshot(&snap(DNS));
    let start = Instant::now();
    let task = tokio::spawn(dns.clone().run());
    settle().await;
    (dns, task, start)
}

const MS: fn(u64) -> Duration = Duration::from_millis;
const SECS: fn(u64) -> Duration = Duration::from_secs;

fn snap(text: &str) -> Snapshot {
    let mut l = Loader::new();
    l.add_str("t.yaml", text);
    compile(l.finish().resources)
}

const DNS: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\nspec:\n  hosts: [api.example.com]\n  resolution: DNS\n  ports: [{number: 443, name: tls, protocol: TLS}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: rr}\nspec:\n  hosts: [rr.example.com]\n  resolution: DNS_ROUND_ROBIN\n  ports: [{number: 80, name: http}]\n  endpoints: [{address: a.example.com}, {address: b.example.com}]\n";

fn ips(set: &EndpointSet) -> Vec<String> {
    set.endpoints.iter().map(|e| e.ip.to_string()).collect()
}

#[tokio::test(start_paused = true)]
async fn dns_refreshes_periodically_and_keeps_the_last_good_set() {
    let s = snap(DNS);
    let fake = Arc::new(FakeResolver::default());
    fake.answers.lock().unwrap().insert(
        "api.example.com".into(),
        vec!["1.1.1.1".parse().unwrap(), "1.1.1.2".parse().unwrap()],
    );
    fake.answers.lock().unwrap().insert(
        "a.example.com".into(),
        vec!["2.2.2.1".parse().unwrap(), "2.2.2.9".parse().unwrap()],
    );
    fake.answers
        .lock()
        .unwrap()
        .insert("b.example.com".into(), vec!["3.3.3.1".parse().unwrap()]);
    let dns =
        Arc::new(DnsDiscover::new(fake.clone()).with_refresh_interval(Duration::from_secs(5)));
    dns.set_snapshot(&s);
    let api = s.service("api.example.com", "default").unwrap();
    let rr = s.service("rr.example.com", "default").unwrap();
    assert!(
        dns.endpoints(api).unwrap().endpoints.is_empty(),
        "nothing before the first resolution"
    );
    let task = tokio::spawn(dns.clone().run());
    tokio::task::yield_now().await;
    // DNS: every address of the host; DNS_ROUND_ROBIN: the first address per hostname
    assert_eq!(ips(&dns.endpoints(api).unwrap()), ["1.1.1.1", "1.1.1.2"]);
    assert_eq!(ips(&dns.endpoints(rr).unwrap()), ["2.2.2.1", "3.3.3.1"]);
    let v = dns.version();

    // failure: keep the last good set
    fake.answers.lock().unwrap().remove("api.example.com");
    tokio::time::sleep(Duration::from_secs(5)).await;
    tokio::task::yield_now().await;
    assert_eq!(fake.calls.load(Ordering::Relaxed), 6);
    assert_eq!(ips(&dns.endpoints(api).unwrap()), ["1.1.1.1", "1.1.1.2"]);
    assert_eq!(dns.version(), v, "nothing changed");

    // recovery with new addresses: published at the next refresh
    fake.answers
        .lock()
        .unwrap()
        .insert("api.example.com".into(), vec!["1.1.1.3".parse().unwrap()]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    tokio::task::yield_now().await;
    assert_eq!(ips(&dns.endpoints(api).unwrap()), ["1.1.1.3"]);
    assert!(dns.version() > v);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_name_is_resolved_again_when_its_ttl_runs_out_and_not_before() {
    let fake = Arc::new(FakeResolver::default());
    fake.answer("api.example.com", &["1.1.1.1"], Some(SECS(5)));
    fake.answer("a.example.com", &["2.2.2.1"], None);
    fake.answer("b.example.com", &["3.3.3.1"], None);
    let (dns, task, start) = running(&fake).await;
    assert_eq!(fake.calls_for("api.example.com"), 1);
    assert_eq!(dns.next_refresh(), Some(start + SECS(5)));

    at(start, MS(4_999)).await;
    assert_eq!(fake.calls_for("api.example.com"), 1, "not before the TTL");
    fake.answer("api.example.com", &["1.1.1.9"], Some(SECS(5)));
    at(start, SECS(5)).await;
    assert_eq!(
        fake.calls_for("api.example.com"),
        2,
        "when the TTL runs out"
    );
    let api = snap(DNS);
    let api = api.service("api.example.com", "default").unwrap();
    assert_eq!(ips(&dns.endpoints(api).unwrap()), ["1.1.1.9"]);
    at(start, SECS(10)).await;
    assert_eq!(fake.calls_for("api.example.com"), 3, "and again, every TTL");
    // the names without a TTL kept their own schedule
    assert_eq!(fake.calls_for("a.example.com"), 1);
    assert_eq!(fake.calls_for("b.example.com"), 1);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_name_without_ttl_is_resolved_at_the_refresh_interval() {
    let fake = Arc::new(FakeResolver::default());
    fake.answer("api.example.com", &["1.1.1.1"], None);
    fake.answer("a.example.com", &["2.2.2.1"], None);
    // a TTL longer than the refresh interval is capped by it
    fake.answer("b.example.com", &["3.3.3.1"], Some(SECS(3600)));
    let (dns, task, start) = running(&fake).await;
    assert_eq!(dns.refresh_interval(), SECS(30));
    assert_eq!(dns.next_refresh(), Some(start + SECS(30)));
    at(start, MS(29_999)).await;
    assert_eq!(
        fake.calls.load(Ordering::Relaxed),
        3,
        "not before the interval"
    );
    at(start, SECS(30)).await;
    for host in ["api.example.com", "a.example.com", "b.example.com"] {
        assert_eq!(fake.calls_for(host), 2, "{host} at the interval");
    }
    at(start, SECS(60)).await;
    assert_eq!(fake.calls.load(Ordering::Relaxed), 9);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_failure_keeps_the_last_good_set_and_is_retried_at_the_refresh_interval() {
    let fake = Arc::new(FakeResolver::default());
    fake.answer("api.example.com", &["1.1.1.1", "1.1.1.2"], Some(SECS(5)));
    fake.answer("a.example.com", &["2.2.2.1"], None);
    fake.answer("b.example.com", &["3.3.3.1"], None);
    let (dns, task, start) = running(&fake).await;
    let s = snap(DNS);
    let api = s.service("api.example.com", "default").unwrap();
    assert_eq!(ips(&dns.endpoints(api).unwrap()), ["1.1.1.1", "1.1.1.2"]);
    let v = dns.version();

    fake.answers.lock().unwrap().remove("api.example.com");
    at(start, SECS(5)).await;
    assert_eq!(fake.calls_for("api.example.com"), 2, "tried at the TTL");
    assert_eq!(ips(&dns.endpoints(api).unwrap()), ["1.1.1.1", "1.1.1.2"]);
    assert_eq!(dns.version(), v, "the last good set stays");
    // an empty answer is a failure too
    fake.answer("api.example.com", &[], Some(SECS(5)));
    at(start, SECS(34)).await;
    assert_eq!(
        fake.calls_for("api.example.com"),
        2,
        "retried at the refresh interval, not the TTL"
    );
    at(start, SECS(35)).await;
    assert_eq!(fake.calls_for("api.example.com"), 3, "retried");
    assert_eq!(ips(&dns.endpoints(api).unwrap()), ["1.1.1.1", "1.1.1.2"]);

    fake.answer("api.example.com", &["1.1.1.3"], Some(SECS(5)));
    at(start, SECS(65)).await;
    assert_eq!(fake.calls_for("api.example.com"), 4);
    assert_eq!(ips(&dns.endpoints(api).unwrap()), ["1.1.1.3"]);
    assert!(dns.version() > v);
    assert_eq!(
        dns.next_refresh(),
        Some(start + SECS(70)),
        "back on the TTL"
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_zero_ttl_is_floored() {
    let fake = Arc::new(FakeResolver::default());
    fake.answer("api.example.com", &["1.1.1.1"], Some(Duration::ZERO));
    fake.answer("a.example.com", &["2.2.2.1"], Some(MS(10)));
    fake.answer("b.example.com", &["3.3.3.1"], None);
    let (dns, task, start) = running(&fake).await;
    assert_eq!(dns.next_refresh(), Some(start + MIN_TTL));
    at(start, MS(999)).await;
    assert_eq!(fake.calls_for("api.example.com"), 1);
    assert_eq!(fake.calls_for("a.example.com"), 1);
    at(start, SECS(1)).await;
    assert_eq!(fake.calls_for("api.example.com"), 2);
    assert_eq!(fake.calls_for("a.example.com"), 2);
    at(start, SECS(10)).await;
    assert_eq!(fake.calls_for("api.example.com"), 11, "once a second");
    assert_eq!(fake.calls_for("b.example.com"), 1);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn run_resolves_the_new_names_of_a_snapshot_at_once() {
    let fake = Arc::new(FakeResolver::default());
    fake.answer("api.example.com", &["1.1.1.1"], None);
    fake.answer("a.example.com", &["2.2.2.1"], None);
    fake.answer("b.example.com", &["3.3.3.1"], None);
    let dns = Arc::new(DnsDiscover::new(fake.clone()));
    let task = tokio::spawn(dns.clone().run());
    settle().await;
    assert_eq!(dns.next_refresh(), None, "nothing to resolve");
    assert_eq!(fake.calls.load(Ordering::Relaxed), 0);
    // a first snapshot wakes a task with nothing to do
    let only_api = DNS.split("---\n").next().unwrap();
    dns.set_snapshot(&snap(only_api));
    settle().await;
    assert_eq!(fake.calls_for("api.example.com"), 1);
    // the next wakes it from its 30s sleep: no time passes
    let start = Instant::now();
    let s = snap(DNS);
    dns.set_snapshot(&s);
    settle().await;
    assert_eq!(Instant::now(), start);
    assert_eq!(fake.calls_for("a.example.com"), 1);
    assert_eq!(fake.calls_for("api.example.com"), 1, "not due yet");
    let rr = s.service("rr.example.com", "default").unwrap();
    assert_eq!(ips(&dns.endpoints(rr).unwrap()), ["2.2.2.1", "3.3.3.1"]);
    // names the snapshot no longer has are forgotten
    dns.set_snapshot(&snap(""));
    settle().await;
    assert_eq!(dns.next_refresh(), None);
    task.abort();
}

#[cfg(feature = "hickory")]
#[tokio::test]
async fn hickory_answers_localhost_and_literals_without_ttl() {
    let r = HickoryResolver::from_system_conf().unwrap();
    let local = r.resolve_with_ttl("localhost").await.unwrap();
    // IPv4 first, IPv6 only for names without IPv4 (hickory answers `localhost` with
    // `::1` too, which may not be reachable)
    assert_eq!(
        local.addrs,
        ["127.0.0.1".parse::<IpAddr>().unwrap()],
        "{local:?}"
    );
    assert_eq!(local.ttl, None);
    let lit = r.resolve_with_ttl("10.1.2.3").await.unwrap();
    assert_eq!(lit.addrs, ["10.1.2.3".parse::<IpAddr>().unwrap()]);
    assert_eq!(lit.ttl, None);
    assert_eq!(
        r.resolve("localhost").await.unwrap(),
        local.addrs,
        "resolve gives the same addresses"
    );
}

#[test]
fn static_and_chain() {
    let s = snap(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec:\n  hosts: [s.default.svc.cluster.local]\n  resolution: STATIC\n  ports: [{number: 80, name: http}]\n  endpoints: [{address: 10.0.0.1}, {address: 'unix:///sock'}]\n",
    );
    let svc = s.service("s.default.svc.cluster.local", "default").unwrap();
    assert_eq!(ips(&StaticDiscover.endpoints(svc).unwrap()), ["10.0.0.1"]);
    let (feed_src, feed) = FeedDiscover::new();
    let chain = Chain::new(vec![Arc::new(feed_src), Arc::new(StaticDiscover)]);
    let v = chain.version();
    feed.publish(
        "s.default.svc.cluster.local",
        EndpointSet::new(vec![DiscoveredEndpoint::new(
            "10.9.9.9".parse().unwrap(),
            svc.endpoints[0].clone(),
        )]),
    );
    assert!(chain.version() > v);
    assert_eq!(ips(&chain.endpoints(svc).unwrap()), ["10.9.9.9"]);
    feed.remove("s.default.svc.cluster.local");
    assert_eq!(ips(&chain.endpoints(svc).unwrap()), ["10.0.0.1"]);
}
