//! Honest configuration through the real proxy: a field is enforced, or the user is told.
//!
//! - Fields this version accepts but does not enforce are logged at start-up and at each
//!   reload, listed in `/config_dump` (`unenforced`, with file, line, resource and field) and
//!   counted by `mesh_proxy_unenforced_fields`.
//! - Security features it does not enforce yet refuse the configuration, at start-up and at
//!   reload (the running configuration keeps serving): security fails closed.
//! - A reload that would lose every resource (an empty or truncated file) or the
//!   `ProxyBootstrap` is refused; the proxy keeps routing.
//! - The route table's build errors are diagnostics with file, line and field, at start-up and
//!   at reload alike.

use crate::support;

use support::*;

fn mesh(v1: &Backend, v2: &Backend, vs: &str) -> String {
    format!(
        "{}{}{}{vs}",
        bootstrap(1, ""),
        service_entry("reviews", 9080, "HTTP", &[v1, v2]),
        destination_rule("reviews", &["v1", "v2"], ""),
    )
}

/// A VirtualService sending everything to `subset`, with `extra` under the route.
fn to_subset(subset: &str, extra: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews, subset: {subset}}}}}]
{extra}"
    )
}

/// A ServiceEntry endpoint on another network (after the VirtualService): not enforced
/// yet (network gateways).
const OTHER_NETWORK: &str = "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: other}
spec:
  hosts: [other.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 10.9.9.9, network: net2}]
";

/// An AuthorizationPolicy that needs an external authorizer, which this proxy has none of.
const AUTHZ_CUSTOM: &str = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules: [{}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unenforced_fields_are_dumped_and_counted_at_start_and_after_reloads() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    // a match's statPrefix (telemetry) and an endpoint's network: accepted, not enforced
    write(
        &file,
        &mesh(
            &v1,
            &v2,
            &to_subset(
                "v1",
                &format!("    match: [{{uri: {{prefix: /}}, statPrefix: hot}}]\n{OTHER_NETWORK}"),
            ),
        ),
    );
    let p = start_files(vec![file.clone()]).await;
    assert_eq!(get_once(p.out, "reviews", &[]).await.backend(), "v1");

    let (_, dump) = admin_get(p.admin, "/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let unenforced = dump["unenforced"].as_array().unwrap();
    let fields: Vec<&str> = unenforced
        .iter()
        .map(|u| u["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.http[0].match[0].statPrefix",
            "spec.endpoints[0].network"
        ],
        "{dump:#}"
    );
    assert_eq!(unenforced[0]["resource"], "VirtualService/default/reviews");
    assert_eq!(unenforced[0]["file"], file.display().to_string());
    assert!(unenforced[0]["line"].as_u64().unwrap() > 1);
    assert!(
        unenforced[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("not enforced by this version (telemetry)"),
        "{dump:#}"
    );
    let (_, stats) = admin_get(p.admin, "/stats/prometheus").await;
    assert_eq!(
        sample(&stats, "mesh_proxy_unenforced_fields"),
        2.0,
        "{stats}"
    );

    // a reload without the statPrefix: one left
    write(&file, &mesh(&v1, &v2, &to_subset("v2", OTHER_NETWORK)));
    p.proxy.reload().unwrap();
    assert_eq!(get_once(p.out, "reviews", &[]).await.backend(), "v2");
    let (_, stats) = admin_get(p.admin, "/stats/prometheus").await;
    assert_eq!(
        sample(&stats, "mesh_proxy_unenforced_fields"),
        1.0,
        "{stats}"
    );
    let (_, dump) = admin_get(p.admin, "/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["unenforced"][0]["field"], "spec.endpoints[0].network");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_policy_refuses_start_and_reload_and_traffic_keeps_flowing() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    let good = mesh(&v1, &v2, &to_subset("v1", ""));

    // start: refused, naming the file, the line, the resource and the field
    write(&file, &format!("{good}{AUTHZ_CUSTOM}"));
    let e = mesh_proxy::proxy::Proxy::start(vec![file.clone()])
        .expect_err("an AuthorizationPolicy this version cannot enforce must refuse start-up")
        .to_string();
    let name = file.display().to_string();
    assert!(e.contains(&format!("error: {name}:")), "{e}");
    assert!(
        e.contains("AuthorizationPolicy/default/ext-authz: spec.action: CUSTOM is not enforced by this version (security): refused, because security fails closed"),
        "{e}"
    );

    // reload: refused, the running configuration keeps routing
    write(&file, &good);
    let p = start_files(vec![file.clone()]).await;
    let generation = p.proxy.state().snapshot().generation;
    write(&file, &format!("{good}{AUTHZ_CUSTOM}"));
    let e = p.proxy.reload().expect_err("refused").to_string();
    assert!(e.contains("security fails closed"), "{e}");
    assert_eq!(p.proxy.state().snapshot().generation, generation);
    assert_eq!(get_once(p.out, "reviews", &[]).await.backend(), "v1");
    let (_, stats) = admin_get(p.admin, "/stats/prometheus").await;
    assert_eq!(
        sample(
            &stats,
            "mesh_proxy_config_reloads_total{result=\"failure\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_loses_every_resource_or_the_bootstrap_is_refused() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    let good = mesh(&v1, &v2, &to_subset("v2", ""));
    write(&file, &good);
    let p = start_files(vec![file.clone()]).await;
    let generation = p.proxy.state().snapshot().generation;
    let mut c = H1::connect(p.out).await;
    assert_eq!(c.get("reviews", &[]).await.backend(), "v2");

    // truncated to nothing, then to a comment: no resources
    for truncated in ["", "# half-written\n"] {
        write(&file, truncated);
        let e = p.proxy.reload().expect_err("refused").to_string();
        assert!(e.contains("has no resources"), "{e}");
        assert_eq!(c.get("reviews", &[]).await.backend(), "v2");
    }
    // cut after the ProxyBootstrap: valid resources, no bootstrap (the defaults would move
    // the listeners and drop the workload's identity at the next restart)
    let cut = good
        .split_once("---")
        .map(|(_, rest)| format!("---{rest}"))
        .unwrap();
    write(&file, &cut);
    let e = p.proxy.reload().expect_err("refused").to_string();
    assert!(e.contains("no ProxyBootstrap"), "{e}");
    assert_eq!(c.get("reviews", &[]).await.backend(), "v2");
    assert_eq!(get_once(p.out, "reviews", &[]).await.backend(), "v2");
    assert_eq!(p.proxy.state().snapshot().generation, generation);
    let (_, stats) = admin_get(p.admin, "/stats/prometheus").await;
    assert_eq!(
        sample(
            &stats,
            "mesh_proxy_config_reloads_total{result=\"failure\"}"
        ),
        3.0
    );
    assert!(
        p.proxy
            .state()
            .last_error()
            .is_some_and(|e| e.contains("ProxyBootstrap"))
    );

    // the whole file again: applied
    write(&file, &mesh(&v1, &v2, &to_subset("v1", "")));
    assert!(p.proxy.reload().unwrap() > generation);
    assert_eq!(c.get("reviews", &[]).await.backend(), "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_table_error_at_reload_names_file_line_and_field() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    write(&file, &mesh(&v1, &v2, &to_subset("v1", "")));
    let p = start_files(vec![file.clone()]).await;
    // Istio's rules accept the value; the route table (as Envoy) refuses the operator
    let bad = to_subset(
        "v2",
        "    headers: {request: {set: {x-up: '%UPSTREAM_NOPE%'}}}\n",
    );
    let text = mesh(&v1, &v2, &bad);
    write(&file, &text);
    let e = p.proxy.reload().expect_err("refused").to_string();
    let line = text
        .lines()
        .position(|l| l.contains("UPSTREAM_NOPE"))
        .unwrap()
        + 1;
    assert!(
        e.contains(&format!("error: {}:{line}:", file.display())),
        "{e}"
    );
    assert!(
        e.contains("VirtualService/default/reviews: spec.http[0].headers.request.set.x-up: "),
        "{e}"
    );
    assert!(
        e.contains("unsupported command operator %UPSTREAM_NOPE%"),
        "{e}"
    );
    assert_eq!(get_once(p.out, "reviews", &[]).await.backend(), "v1");
}
