//! AuthorizationPolicy on the sidecar's inbound side, through the real proxy: the cases of
//! istio.io's authorization tasks (docs/tasks/security/authorization/authz-http, authz-deny,
//! authz-ip) with mTLS clients whose certificates the mesh CA makes at test time. A denial
//! is `403 RBAC: access denied` with flag `RBAC`, and the application never sees it.

use crate::support;

use mesh_tls::ca::MeshCa;
use support::mtls::*;
use support::*;

fn assert_denied(r: &Reply, what: &str) {
    assert_eq!(r.status, 403, "{what}: {r:?}");
    assert_eq!(r.flags(), "RBAC", "{what}");
    assert_eq!(r.body, "RBAC: access denied", "{what}");
}

#[tokio::test]
async fn authz_http_an_allowed_principal_gets_200_another_gets_403_and_never_reaches_the_app() {
    // authz-http "details-viewer": only productpage's identity, GET only
    let policy = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/productpage]}}]
    to: [{operation: {methods: [GET]}}]
";
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = backend("app").await;
    let p = start(&reviews_config(dir.path(), &ca, &app, policy)).await;
    let inbound = p.proxy.inbound_addr().unwrap();

    let mut productpage = Client::mtls(inbound, &ca, "productpage").await;
    let ok = productpage.send("GET", "/reviews/1", &[]).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.backend(), "app");
    // the same connection, another method: the identity is cached, the rule still checked
    assert_denied(&productpage.send("POST", "/reviews/1", &[]).await, "POST");

    let mut ratings = Client::mtls(inbound, &ca, "ratings").await;
    assert_denied(
        &ratings.send("GET", "/reviews/1", &[]).await,
        "another principal",
    );
    let mut plain = Client::plain(inbound).await;
    assert_denied(&plain.send("GET", "/reviews/1", &[]).await, "plaintext");
    assert_eq!(app.hits(), 1, "no denied request reached the application");
}

#[tokio::test]
async fn authz_deny_takes_precedence_and_paths_and_methods_are_matched() {
    // authz-deny: "deny-method-get" (GET without `x-token: admin`) and "allow-path-ip"
    let policies = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-method-get, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - to: [{operation: {methods: [GET]}}]
    when: [{key: 'request.headers[x-token]', notValues: [admin]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-path-ip, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - to: [{operation: {paths: [/ip]}}]
";
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = backend("app").await;
    let p = start(&reviews_config(dir.path(), &ca, &app, policies)).await;
    let mut c = Client::mtls(p.proxy.inbound_addr().unwrap(), &ca, "sleep").await;
    let admin = [("x-token", "admin")];
    let guest = [("x-token", "guest")];
    assert_denied(&c.send("GET", "/ip", &[]).await, "GET /ip, no token");
    assert_denied(&c.send("GET", "/ip", &guest).await, "GET /ip as guest");
    assert_eq!(c.send("GET", "/ip", &admin).await.status, 200);
    assert_eq!(c.send("POST", "/ip", &[]).await.status, 200);
    assert_denied(&c.send("GET", "/headers", &admin).await, "no ALLOW matches");
    // the path is normalised before matching (and forwarded normalised)
    assert_denied(
        &c.send("GET", "/ip/../headers", &admin).await,
        "/ip/../headers",
    );
    assert_eq!(c.send("GET", "/headers/../ip", &admin).await.status, 200);
    assert_eq!(app.hits(), 3);
}

#[tokio::test]
async fn authz_ip_blocks_and_a_reload_swaps_the_policies() {
    // authz-ip: an ALLOW from ipBlocks, then (after a reload) a DENY for the same block
    let allow = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ip-allow, namespace: default}
spec:
  rules: [{from: [{source: {ipBlocks: [127.0.0.0/8]}}]}]
";
    let deny = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ip-deny, namespace: default}
spec:
  action: DENY
  rules: [{from: [{source: {ipBlocks: [127.0.0.1]}}]}]
";
    let elsewhere = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ip-allow, namespace: default}
spec:
  rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]
";
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = backend("app").await;
    let file = dir.path().join("mesh.yaml");
    write(&file, &reviews_config(dir.path(), &ca, &app, allow));
    let p = start_files(vec![file.clone()]).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let mut c = Client::plain(inbound).await;
    assert_eq!(c.send("GET", "/", &[]).await.status, 200);

    write(&file, &reviews_config(dir.path(), &ca, &app, elsewhere));
    p.proxy.reload().unwrap();
    assert_denied(&c.send("GET", "/", &[]).await, "not in the ALLOW block");

    write(
        &file,
        &reviews_config(dir.path(), &ca, &app, &format!("{allow}{deny}")),
    );
    p.proxy.reload().unwrap();
    assert_denied(&c.send("GET", "/", &[]).await, "DENY over ALLOW");
    assert_eq!(app.hits(), 1);
}

#[tokio::test]
async fn a_policy_this_version_cannot_enforce_refuses_start_and_reload() {
    let custom = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: default}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules: [{}]
";
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = backend("app").await;
    let file = dir.path().join("mesh.yaml");
    write(&file, &reviews_config(dir.path(), &ca, &app, custom));
    let err = mesh_proxy::proxy::Proxy::start(vec![file.clone()]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("AuthorizationPolicy/default/ext-authz")
            && text.contains("spec.action")
            && text.contains("fails closed"),
        "{text}"
    );

    // running with no policy, a reload to the refused one keeps the running configuration
    write(&file, &reviews_config(dir.path(), &ca, &app, ""));
    let p = start_files(vec![file.clone()]).await;
    write(&file, &reviews_config(dir.path(), &ca, &app, custom));
    assert!(p.proxy.reload().is_err());
    let mut c = Client::plain(p.proxy.inbound_addr().unwrap()).await;
    assert_eq!(c.send("GET", "/", &[]).await.status, 200);
}
