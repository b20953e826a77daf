//! RequestAuthentication on the sidecar's inbound side, through the real proxy: istio.io's
//! "JWT authentication" and "Authorization with JWT" tasks (docs/tasks/security/
//! authentication/authn-policy, authorization/authz-jwt) with ES256 keys made at test time
//! and the JWKS served by a local HTTP server on port 0. Without a token a request passes
//! RequestAuthentication (Istio's `allow_missing`) and an AuthorizationPolicy decides; an
//! invalid token is `401` with Envoy's body; a valid one reaches the application with its
//! claim headers and without the token.

use crate::support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Request, Response};
use hyper_util::rt::TokioIo;
use mesh_tls::ca::MeshCa;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use support::mtls::*;
use support::*;

const ISS: &str = "testing@secure.istio.io";

/// An ES256 signing key and its public JWK.
struct Key {
    kid: &'static str,
    pair: EcdsaKeyPair,
}

impl Key {
    fn new(kid: &'static str) -> Key {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Key { kid, pair }
    }

    fn jwks(&self) -> String {
        let p = self.pair.public_key().as_ref();
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..]),
        }]})
        .to_string()
    }

    /// A token with `claims` (ES256's signature is r || s, as ring's fixed signing gives).
    fn sign(&self, claims: serde_json::Value) -> String {
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), signed.as_bytes())
            .unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Istio's demo token's claims (`security/tools/jwt/samples/demo.jwt`), valid for an hour.
fn demo_claims() -> serde_json::Value {
    serde_json::json!({"iss": ISS, "sub": ISS, "exp": now() + 3600, "foo": "bar", "groups": ["group1", "group2"]})
}

/// The application: answers 200 with the request's headers as its body (`name: value`
/// lines).
async fn echo_app() -> Backend {
    let handler: Handler = Arc::new(|req: Request<hyper::body::Incoming>| {
        Box::pin(async move {
            let mut text = String::new();
            for (k, v) in req.headers() {
                text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            Response::builder()
                .header("x-backend", "app")
                .body(full(text))
                .unwrap()
        })
    });
    backend_with("app", handler).await
}

/// A JWKS server whose document the test can change.
async fn jwks_server(doc: Arc<Mutex<String>>) -> Backend {
    let handler: Handler = Arc::new(move |_req| {
        let body = doc.lock().unwrap().clone();
        Box::pin(async move {
            Response::builder()
                .header("content-type", "application/json")
                .body(full(body))
                .unwrap()
        })
    });
    backend_with("jwks", handler).await
}

/// One plaintext HTTP/1.1 request to the inbound listener.
async fn send(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let tcp = bounded(tokio::net::TcpStream::connect(addr)).await.unwrap();
    let (mut tx, conn) = bounded(hyper::client::conn::http1::handshake(TokioIo::new(tcp)))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::get(path).header("host", "reviews");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let res = bounded(tx.send_request(b.body(full("")).unwrap()))
        .await
        .unwrap();
    read(res).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The task's RequestAuthentication (keys inline or from `jwks_uri`), for `reviews`.
fn request_authentication(keys: &str, extra: &str) -> String {
    format!(
        "---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt-example, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules:
  - issuer: {ISS}
{keys}{extra}"
    )
}

fn inline(key: &Key) -> String {
    format!("    jwks: '{}'\n", key.jwks())
}

const REQUIRE_ANY_PRINCIPAL: &str = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  rules: [{from: [{source: {requestPrincipals: ['*']}}]}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_200_without_policy_and_403_once_a_principal_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = echo_app().await;
    let key = Key::new("k1");
    let file = dir.path().join("mesh.yaml");
    let ra = request_authentication(&inline(&key), "");
    write(&file, &reviews_config(dir.path(), &ca, &app, &ra));
    let p = start_files(vec![file.clone()]).await;
    let inbound = p.proxy.inbound_addr().unwrap();

    // authn-policy: a request without a token passes RequestAuthentication
    let r = send(inbound, "/headers", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), "app");

    // authz-jwt "require-jwt": now a principal is required
    write(
        &file,
        &reviews_config(
            dir.path(),
            &ca,
            &app,
            &format!("{ra}{REQUIRE_ANY_PRINCIPAL}"),
        ),
    );
    p.proxy.reload().unwrap();
    let before = app.hits();
    let r = send(inbound, "/headers", &[]).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.body, "RBAC: access denied");
    assert_eq!(r.flags(), "RBAC");
    let token = key.sign(demo_claims());
    let r = send(inbound, "/headers", &[("authorization", &bearer(&token))]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        app.hits(),
        before + 1,
        "only the request with a token got through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_reaches_the_app_with_its_claim_headers_and_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = echo_app().await;
    let key = Key::new("k1");
    let file = dir.path().join("mesh.yaml");
    // authz-jwt's "require-jwt" with the groups condition, and the task's claim header
    let ra = request_authentication(
        &inline(&key),
        "    outputClaimToHeaders: [{header: x-jwt-claim-foo, claim: foo}]\n    outputPayloadToHeader: x-jwt-payload\n",
    );
    let ap = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ['testing@secure.istio.io/testing@secure.istio.io']}}]
    when: [{key: 'request.auth.claims[groups]', values: [group1]}]
";
    write(
        &file,
        &reviews_config(dir.path(), &ca, &app, &format!("{ra}{ap}")),
    );
    let p = start_files(vec![file]).await;
    let inbound = p.proxy.inbound_addr().unwrap();

    let token = key.sign(demo_claims());
    let r = send(
        inbound,
        "/headers",
        &[
            ("authorization", &bearer(&token)),
            ("x-jwt-claim-foo", "forged"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("x-jwt-claim-foo: bar\n"), "{}", r.body);
    assert!(!r.body.contains("forged"), "{}", r.body);
    let payload = token.split('.').nth(1).unwrap();
    assert!(
        r.body.contains(&format!("x-jwt-payload: {payload}\n")),
        "{}",
        r.body
    );
    assert!(
        !r.body.contains("authorization"),
        "the token is not forwarded: {}",
        r.body
    );

    // a valid token without group1: the condition denies
    let mut claims = demo_claims();
    claims["groups"] = serde_json::json!(["group2"]);
    let r = send(
        inbound,
        "/headers",
        &[("authorization", &bearer(&key.sign(claims)))],
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tokens_are_401_with_envoys_answer_and_never_reach_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = echo_app().await;
    let key = Key::new("k1");
    let other = Key::new("k1");
    let file = dir.path().join("mesh.yaml");
    let ra = request_authentication(&inline(&key), "    audiences: [reviews.default]\n");
    write(&file, &reviews_config(dir.path(), &ca, &app, &ra));
    let p = start_files(vec![file]).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let claims = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = demo_claims();
        c["aud"] = serde_json::json!("reviews.default");
        f(&mut c);
        c
    };
    let good = key.sign(claims(&|_| {}));
    assert_eq!(
        send(inbound, "/", &[("authorization", &bearer(&good))])
            .await
            .status,
        200
    );
    let hits = app.hits();
    let cases = [
        (
            "expired",
            key.sign(claims(&|c| c["exp"] = serde_json::json!(now() - 3600))),
            401,
            "Jwt is expired",
        ),
        (
            "bad signature",
            other.sign(claims(&|_| {})),
            401,
            "Jwt verification fails",
        ),
        (
            "wrong issuer",
            key.sign(claims(&|c| c["iss"] = serde_json::json!("evil"))),
            401,
            "Jwt issuer is not configured",
        ),
        (
            "wrong audience",
            key.sign(claims(&|c| c["aud"] = serde_json::json!("other"))),
            403,
            "Audiences in Jwt are not allowed",
        ),
        (
            "malformed",
            "not.a-token".to_string(),
            401,
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
    ];
    for (name, token, status, body) in cases {
        let r = send(inbound, "/", &[("authorization", &bearer(&token))]).await;
        assert_eq!(r.status, status, "{name}: {r:?}");
        assert_eq!(r.body, body, "{name}");
        assert!(
            r.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .ends_with(", error=\"invalid_token\""),
            "{name}"
        );
    }
    // a token in the query parameter is read too
    let r = send(
        inbound,
        &format!("/?access_token={}", other.sign(claims(&|_| {}))),
        &[],
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(app.hits(), hits, "no invalid token reached the application");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_uri_is_fetched_from_a_local_server_and_a_rotated_key_is_used_after_a_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = echo_app().await;
    let old = Key::new("2026-01");
    let new = Key::new("2026-02");
    let doc = Arc::new(Mutex::new(old.jwks()));
    let server = jwks_server(doc.clone()).await;
    let file = dir.path().join("mesh.yaml");
    let ra = request_authentication(
        &format!(
            "    jwksUri: http://127.0.0.1:{}/jwks.json\n",
            server.port()
        ),
        "",
    );
    write(
        &file,
        &reviews_config(
            dir.path(),
            &ca,
            &app,
            &format!("{ra}{REQUIRE_ANY_PRINCIPAL}"),
        ),
    );
    // start-up waits for the first fetch: the first request already has the keys
    let p = start_files(vec![file]).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    assert!(server.hits() >= 1);
    let with = |t: &str| vec![("authorization".to_string(), bearer(t))];
    let old_token = old.sign(demo_claims());
    let new_token = new.sign(demo_claims());
    let h = with(&old_token);
    let r = send(inbound, "/", &[(&h[0].0, &h[0].1)]).await;
    assert_eq!(r.status, 200, "{r:?}");

    // the issuer rotates its key: unknown until the JWKS is fetched again
    *doc.lock().unwrap() = new.jwks();
    let h = with(&new_token);
    let r = send(inbound, "/", &[(&h[0].0, &h[0].1)]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.body, "Jwks doesn't have key to match kid or alg from Jwt");
    let state = p.proxy.state().clone();
    let stored = tokio::task::spawn_blocking(move || state.refresh_jwks())
        .await
        .unwrap();
    assert_eq!(stored, 1);
    let r = send(inbound, "/", &[(&h[0].0, &h[0].1)]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let h = with(&old_token);
    let r = send(inbound, "/", &[(&h[0].0, &h[0].1)]).await;
    assert_eq!(r.status, 401, "the retired key no longer verifies: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_jwks_fails_closed_for_tokens_and_lets_tokenless_requests_pass() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = echo_app().await;
    let key = Key::new("k1");
    let port = dead_port().await;
    let file = dir.path().join("mesh.yaml");
    let ra = request_authentication(
        &format!("    jwksUri: http://127.0.0.1:{port}/jwks.json\n    timeout: 1s\n"),
        "",
    );
    write(&file, &reviews_config(dir.path(), &ca, &app, &ra));
    let p = start_files(vec![file]).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let token = key.sign(demo_claims());
    let r = send(inbound, "/", &[("authorization", &bearer(&token))]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.body, "Jwks remote fetch is failed");
    assert_eq!(send(inbound, "/", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_fetched_keys_while_the_jwks_server_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = echo_app().await;
    let key = Key::new("k1");
    let server = jwks_server(Arc::new(Mutex::new(key.jwks()))).await;
    let file = dir.path().join("mesh.yaml");
    let ra = request_authentication(
        &format!(
            "    jwksUri: http://127.0.0.1:{}/jwks.json\n    timeout: 1s\n",
            server.port()
        ),
        "",
    );
    write(
        &file,
        &reviews_config(
            dir.path(),
            &ca,
            &app,
            &format!("{ra}{REQUIRE_ANY_PRINCIPAL}"),
        ),
    );
    let p = start_files(vec![file]).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let token = bearer(&key.sign(demo_claims()));
    assert_eq!(
        send(inbound, "/", &[("authorization", &token)])
            .await
            .status,
        200
    );
    // the JWKS server goes away, then the configuration is reloaded (its fetch fails)
    drop(server);
    let proxy = p.proxy;
    let proxy = tokio::task::spawn_blocking(move || {
        proxy.reload().unwrap();
        proxy
    })
    .await
    .unwrap();
    let r = send(inbound, "/", &[("authorization", &token)]).await;
    assert_eq!(r.status, 200, "the running keys carried over: {r:?}");
    drop(proxy);
}
