//! The `Sidecar` kind through the whole proxy (issue 15): `egress[].hosts` limits what the
//! workload reaches (a service it does not see is a host outside the registry:
//! `REGISTRY_ONLY` answers `502 NR`) and `egress[].port` to one port, Istio's precedence between the workload's, the
//! namespace's and the root namespace's Sidecar, a Sidecar's `outboundTrafficPolicy`
//! overriding the mesh's, and a reload that changes the Sidecar.

use crate::support;

use support::*;

/// A STATIC ServiceEntry `<name>.<ns>.svc.cluster.local` on port 80 in namespace `ns`, one
/// endpoint: `up`.
fn service_in(ns: &str, name: &str, up: &Backend) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{name}.{ns}.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}}}}}
",
        up.port()
    )
}

/// A Sidecar in `ns`; `selector` is `Some("app: x")` or none; `spec` is indented YAML.
fn sidecar(ns: &str, name: &str, selector: Option<&str>, spec: &str) -> String {
    let sel = selector
        .map(|s| format!("  workloadSelector:\n    labels: {{{s}}}\n"))
        .unwrap_or_default();
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: {name}, namespace: {ns}}}
spec:
{sel}{spec}"
    )
}

/// A bootstrap for workload `productpage` (label `app: productpage`) in namespace `shop`.
fn shop_bootstrap(mesh_policy: &str) -> String {
    format!(
        "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: e2e}}
spec:
  concurrency: 1
  workload:
    name: productpage-v1
    namespace: shop
    labels: {{app: productpage}}
  mesh: {{outboundTrafficPolicy: {mesh_policy}, rootNamespace: istio-system}}
  outbound: {{address: 127.0.0.1, port: 0}}
  admin: {{address: 127.0.0.1, port: 0}}
"
    )
}

struct Mesh {
    cart: Backend,
    istiod: Backend,
    ledger: Backend,
}

const CART: &str = "cart.shop.svc.cluster.local";
const ISTIOD: &str = "istiod.istio-system.svc.cluster.local";
const LEDGER: &str = "ledger.bank.svc.cluster.local";

impl Mesh {
    async fn new() -> Mesh {
        Mesh {
            cart: backend("cart").await,
            istiod: backend("istiod").await,
            ledger: backend("ledger").await,
        }
    }

    fn services(&self) -> String {
        format!(
            "{}{}{}",
            service_in("shop", "cart", &self.cart),
            service_in("istio-system", "istiod", &self.istiod),
            service_in("bank", "ledger", &self.ledger)
        )
    }
}

/// (status, backend or response flags) of a GET to `host` through the proxy.
async fn outcome(p: &Running, host: &str) -> (u16, String) {
    let r = get_once(p.out, host, &[]).await;
    let who = if r.backend().is_empty() {
        r.flags().to_string()
    } else {
        r.backend().to_string()
    };
    (r.status.as_u16(), who)
}

/// Istio's Sidecar reference, "the sidecar in namespace prod-us1 ... allows egress to the
/// istio-system namespace and its own" (`./*`, `istio-system/*`): the workload reaches its
/// namespace's and istio-system's services; a service of another namespace is outside its
/// registry, so `REGISTRY_ONLY` answers `502 NR` (Istio's BlackHoleCluster) and the upstream
/// never sees the request; `/clusters` does not list it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_hosts_limit_what_the_workload_sees_and_reaches() {
    let m = Mesh::new().await;
    let yaml = format!(
        "{}{}{}",
        shop_bootstrap("REGISTRY_ONLY"),
        m.services(),
        sidecar(
            "shop",
            "default",
            None,
            "  egress:\n  - hosts: [\"./*\", \"istio-system/*\"]\n"
        )
    );
    let p = start(&yaml).await;
    assert_eq!(outcome(&p, CART).await, (200, "cart".into()));
    assert_eq!(outcome(&p, "cart").await, (200, "cart".into()));
    assert_eq!(outcome(&p, ISTIOD).await, (200, "istiod".into()));
    assert_eq!(outcome(&p, LEDGER).await, (502, "NR".into()));
    assert_eq!(m.ledger.hits(), 0);
    let (_, clusters) = admin_get(p.admin, "/clusters").await;
    assert!(
        clusters.contains(CART) && clusters.contains(ISTIOD),
        "{clusters}"
    );
    assert!(!clusters.contains(LEDGER), "{clusters}");
    p.proxy.drain().await;
}

/// Istio's selection (`getSidecarScope`): the Sidecar whose `workloadSelector` matches the
/// workload wins over the namespace's selector-less one, which wins over the root
/// namespace's; each case shows by which single service the workload reaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selector_then_namespace_then_root_namespace_sidecar() {
    let m = Mesh::new().await;
    let root = sidecar(
        "istio-system",
        "default",
        None,
        "  egress:\n  - hosts: [\"bank/*\"]\n",
    );
    let ns = sidecar("shop", "default", None, "  egress:\n  - hosts: [\"./*\"]\n");
    let selecting = sidecar(
        "shop",
        "productpage",
        Some("app: productpage"),
        "  egress:\n  - hosts: [\"istio-system/*\"]\n",
    );
    // a selector that does not match the workload is not applied
    let other = sidecar(
        "shop",
        "reviews",
        Some("app: reviews"),
        "  egress:\n  - hosts: [\"~/*\"]\n",
    );
    let cases = [
        (format!("{root}{ns}{selecting}{other}"), ISTIOD),
        (format!("{root}{ns}{other}"), CART),
        (format!("{root}{other}"), LEDGER),
    ];
    for (sidecars, reachable) in cases {
        let yaml = format!(
            "{}{}{sidecars}",
            shop_bootstrap("REGISTRY_ONLY"),
            m.services()
        );
        let p = start(&yaml).await;
        for host in [CART, ISTIOD, LEDGER] {
            let got = outcome(&p, host).await;
            if host == reachable {
                assert_eq!(got.0, 200, "{host} with {reachable} expected: {got:?}");
            } else {
                assert_eq!(got, (502, "NR".into()), "{host} with {reachable} expected");
            }
        }
        p.proxy.drain().await;
    }
}

/// `Sidecar.outboundTrafficPolicy` replaces the mesh's for that workload: `REGISTRY_ONLY`
/// under a mesh `ALLOW_ANY` answers `502 NR` for a host outside the registry, and
/// `ALLOW_ANY` under a mesh `REGISTRY_ONLY` passes it through (here, an address:port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_outbound_traffic_policy_overrides_the_mesh() {
    let m = Mesh::new().await;
    let unknown = format!("127.0.0.1:{}", m.ledger.port());
    let cases = [
        ("ALLOW_ANY", None, 200),
        ("ALLOW_ANY", Some("REGISTRY_ONLY"), 502),
        ("REGISTRY_ONLY", None, 502),
        ("REGISTRY_ONLY", Some("ALLOW_ANY"), 200),
    ];
    for (mesh, workload, want) in cases {
        let sc = workload
            .map(|mode| {
                sidecar(
                    "shop",
                    "default",
                    None,
                    &format!("  outboundTrafficPolicy: {{mode: {mode}}}\n"),
                )
            })
            .unwrap_or_default();
        let yaml = format!("{}{}{sc}", shop_bootstrap(mesh), m.services());
        let p = start(&yaml).await;
        let got = outcome(&p, &unknown).await;
        assert_eq!(got.0, want, "mesh {mesh}, Sidecar {workload:?}: {got:?}");
        if want == 502 {
            assert_eq!(got.1, "NR");
        }
        // registry services are reachable either way (the Sidecar has no egress: `*/*`)
        assert_eq!(outcome(&p, CART).await, (200, "cart".into()));
        p.proxy.drain().await;
    }
}

/// A reload that changes the Sidecar takes effect: the workload sees the bank namespace
/// once its Sidecar imports it, and not after it stops importing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_sidecar_takes_effect() {
    let m = Mesh::new().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    let config = |hosts: &str| {
        format!(
            "{}{}{}",
            shop_bootstrap("REGISTRY_ONLY"),
            m.services(),
            sidecar(
                "shop",
                "default",
                None,
                &format!("  egress:\n  - hosts: [{hosts}]\n")
            )
        )
    };
    write(&file, &config("\"./*\""));
    let p = start_files(vec![file.clone()]).await;
    assert_eq!(outcome(&p, LEDGER).await, (502, "NR".into()));
    write(
        &file,
        &config("\"./*\", \"bank/ledger.bank.svc.cluster.local\""),
    );
    p.proxy.reload().unwrap();
    assert_eq!(outcome(&p, LEDGER).await, (200, "ledger".into()));
    assert_eq!(outcome(&p, CART).await, (200, "cart".into()));
    write(&file, &config("\"bank/*\""));
    p.proxy.reload().unwrap();
    assert_eq!(outcome(&p, CART).await, (502, "NR".into()));
    assert_eq!(outcome(&p, LEDGER).await, (200, "ledger".into()));
    p.proxy.drain().await;
}

/// `outboundTrafficPolicy.egressProxy` (Istio's Sidecar reference, "OutboundTrafficPolicy"):
/// under `ALLOW_ANY`, a request for a host outside the registry goes to the egress proxy's
/// service and port instead of passing through; registry services are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_proxy_receives_unknown_hosts_under_allow_any() {
    let m = Mesh::new().await;
    let egress = backend("egress").await;
    let yaml = format!(
        "{}{}{}{}",
        shop_bootstrap("REGISTRY_ONLY"),
        m.services(),
        service_in("istio-system", "egressgateway", &egress),
        sidecar(
            "shop",
            "default",
            None,
            "  outboundTrafficPolicy:
    mode: ALLOW_ANY
    egressProxy:
      host: egressgateway.istio-system.svc.cluster.local
      port: {number: 80}
"
        )
    );
    let p = start(&yaml).await;
    let unknown = format!("127.0.0.1:{}", m.ledger.port());
    assert_eq!(outcome(&p, &unknown).await, (200, "egress".into()));
    assert_eq!(outcome(&p, "example.com").await, (200, "egress".into()));
    assert_eq!(m.ledger.hits(), 0);
    assert_eq!(outcome(&p, CART).await, (200, "cart".into()));
    assert_eq!(egress.hits(), 2);
    p.proxy.drain().await;
}

/// Istio's Sidecar `egress[].port`: a listener with a port imports its hosts on that port
/// only. `multi` serves port 80 (backend cart) and 9080 (backend ledger): with a listener
/// on 9080 for `./*`, the workload reaches `multi:9080` and not `multi:80`, nor `cart` (port
/// 80 only), both outside its registry (`502 NR`, the upstream never asked). With the 9080
/// listener for `bank/*` and a catch-all for `./*`, port 9080 serves bank's hosts only:
/// `multi:80` and `cart` are reached, `multi:9080` is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_port_imports_hosts_on_that_port_only() {
    let m = Mesh::new().await;
    let multi = format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: multi, namespace: shop}}
spec:
  hosts: [multi.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}, {{number: 9080, name: http-alt, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}, http-alt: {}}}}}
",
        m.cart.port(),
        m.ledger.port()
    );
    const M80: &str = "multi.shop.svc.cluster.local:80";
    const M9080: &str = "multi.shop.svc.cluster.local:9080";
    let only_9080 = sidecar(
        "shop",
        "default",
        None,
        "  egress:\n  - port: {number: 9080, protocol: HTTP, name: alt}\n    hosts: [\"./*\"]\n",
    );
    let yaml = format!(
        "{}{}{multi}{only_9080}",
        shop_bootstrap("REGISTRY_ONLY"),
        m.services()
    );
    let p = start(&yaml).await;
    assert_eq!(outcome(&p, M9080).await, (200, "ledger".into()));
    assert_eq!(outcome(&p, M80).await, (502, "NR".into()));
    assert_eq!(outcome(&p, CART).await, (502, "NR".into()));
    assert_eq!(m.cart.hits(), 0);
    assert_eq!(m.ledger.hits(), 1);
    p.proxy.drain().await;

    let claimed = sidecar(
        "shop",
        "default",
        None,
        "  egress:\n  - port: {number: 9080, name: alt}\n    hosts: [\"bank/*\"]\n  - hosts: [\"./*\"]\n",
    );
    let yaml = format!(
        "{}{}{multi}{claimed}",
        shop_bootstrap("REGISTRY_ONLY"),
        m.services()
    );
    let p = start(&yaml).await;
    assert_eq!(outcome(&p, M80).await, (200, "cart".into()));
    assert_eq!(outcome(&p, CART).await, (200, "cart".into()));
    assert_eq!(outcome(&p, M9080).await, (502, "NR".into()));
    assert_eq!(m.ledger.hits(), 1);
    p.proxy.drain().await;
}
