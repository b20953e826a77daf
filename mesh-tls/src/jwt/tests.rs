//! JWT validation with keys made at test time (ring), against Envoy's `jwt_authn` answers
//! (`jwt_verify_lib` statuses) and Istio's RequestAuthentication fields.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mesh_core::model::security::RequestAuthentication;
use mesh_core::selector::Labels;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt};

use super::*;

const ISS: &str = "testing@secure.istio.io";
/// The tests' clock (Unix seconds).
const NOW: u64 = 1_800_000_000;

/// A signing key and its public JWK.
struct Signer {
    alg: Algorithm,
    kid: Option<&'static str>,
    key: EncodingKey,
    jwk: serde_json::Value,
}

fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn es256(kid: Option<&'static str>) -> Signer {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("a P-256 key");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("the key parses");
    // the public key is 0x04 || x || y
    let public = pair.public_key().as_ref();
    let mut jwk =
        json!({"kty": "EC", "crv": "P-256", "x": b64(&public[1..33]), "y": b64(&public[33..])});
    if let Some(k) = kid {
        jwk["kid"] = json!(k);
    }
    Signer {
        alg: Algorithm::ES256,
        kid,
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk,
    }
}

fn ed25519() -> Signer {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("an Ed25519 key");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("the key parses");
    Signer {
        alg: Algorithm::EdDSA,
        kid: None,
        key: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())}),
    }
}

fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

fn sign(s: &Signer, claims: serde_json::Value) -> String {
    let mut h = Header::new(s.alg);
    h.kid = s.kid.map(str::to_string);
    jsonwebtoken::encode(&h, &claims, &s.key).expect("a signed token")
}

fn claims() -> serde_json::Value {
    json!({"iss": ISS, "sub": ISS, "exp": NOW + 3600, "groups": ["group1", "group2"], "foo": "bar"})
}

fn compile_rules(rules: serde_json::Value) -> Result<Authenticator, Vec<JwtError>> {
    let spec: RequestAuthentication =
        serde_json::from_value(json!({"jwtRules": rules})).expect("a valid spec");
    let labels = Labels::default();
    let w = JwtWorkload {
        root_namespace: "istio-system",
        namespace: "foo",
        labels: &labels,
    };
    Authenticator::compile(
        &[RequestAuthRef {
            namespace: "foo",
            name: "jwt-example",
            spec: &spec,
        }],
        &w,
    )
}

fn rule(extra: serde_json::Value, jwks: &str) -> Authenticator {
    let mut r = json!({"issuer": ISS, "jwks": jwks});
    if let (Some(r), Some(e)) = (r.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    compile_rules(json!([r])).expect("the rule compiles")
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("a header value"),
    );
    h
}

fn check(a: &Authenticator, token: &str) -> Result<Option<RequestAuth>, JwtStatus> {
    a.authenticate(&mut bearer(token), &Uri::from_static("/headers"), NOW)
}

#[test]
fn a_valid_es256_token_gives_the_request_principal_and_claims() {
    let k = es256(Some("k1"));
    let a = rule(json!({}), &jwks(&[&k]));
    let auth = check(&a, &sign(&k, claims()))
        .expect("valid")
        .expect("a principal");
    assert_eq!(
        &*auth.principal,
        "testing@secure.istio.io/testing@secure.istio.io"
    );
    assert_eq!(auth.claim(&["foo"]), Some(&json!("bar")));
}

#[test]
fn a_valid_eddsa_token_is_accepted() {
    let k = ed25519();
    let a = rule(json!({}), &jwks(&[&k]));
    assert!(check(&a, &sign(&k, claims())).expect("valid").is_some());
}

#[test]
fn invalid_tokens_get_envoys_status() {
    let k = es256(Some("k1"));
    let other = es256(Some("k1"));
    let unknown_kid = es256(Some("k9"));
    let a = rule(json!({"audiences": ["bookinfo.com"]}), &jwks(&[&k]));
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims();
        c["aud"] = json!("bookinfo.com");
        f(&mut c);
        c
    };
    let good = sign(&k, with(&|_| {}));
    assert!(check(&a, &good).expect("the baseline is valid").is_some());
    let none_alg = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(with(&|_| {}).to_string().as_bytes())
    );
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &with(&|_| {}),
        &EncodingKey::from_secret(b"secret"),
    )
    .expect("an HMAC token");
    let cases: Vec<(&str, String, JwtStatus)> = vec![
        (
            "expired beyond the 60 s skew",
            sign(&k, with(&|c| c["exp"] = json!(NOW - 61))),
            JwtStatus::Expired,
        ),
        (
            "not yet valid beyond the skew",
            sign(&k, with(&|c| c["nbf"] = json!(NOW + 61))),
            JwtStatus::NotYetValid,
        ),
        (
            "wrong issuer",
            sign(&k, with(&|c| c["iss"] = json!("evil.example.com"))),
            JwtStatus::UnknownIssuer,
        ),
        (
            "wrong audience",
            sign(&k, with(&|c| c["aud"] = json!(["other.com"]))),
            JwtStatus::AudienceNotAllowed,
        ),
        (
            "bad signature (another key, same kid)",
            sign(&other, with(&|_| {})),
            JwtStatus::VerificationFail,
        ),
        (
            "unknown kid",
            sign(&unknown_kid, with(&|_| {})),
            JwtStatus::KidAlgMismatch,
        ),
        ("alg none", none_alg, JwtStatus::HeaderNotImplementedAlg),
        ("alg HS256", hs256, JwtStatus::HeaderNotImplementedAlg),
        ("malformed", "abc.def".into(), JwtStatus::BadFormat),
        (
            "exp not a number (never read as no expiry)",
            sign(&k, with(&|c| c["exp"] = json!("tomorrow"))),
            JwtStatus::PayloadExpNotInteger,
        ),
        (
            "exp with a fraction",
            sign(&k, with(&|c| c["exp"] = json!(1.5))),
            JwtStatus::PayloadExpNotInteger,
        ),
        (
            "nbf negative",
            sign(&k, with(&|c| c["nbf"] = json!(-1))),
            JwtStatus::PayloadNbfNotInteger,
        ),
        (
            "iss not a string",
            sign(&k, with(&|c| c["iss"] = json!(7))),
            JwtStatus::PayloadIssNotString,
        ),
        (
            "aud not strings",
            sign(&k, with(&|c| c["aud"] = json!([1]))),
            JwtStatus::PayloadAudNotString,
        ),
        (
            "header not base64",
            "a.e30.c2ln".into(),
            JwtStatus::HeaderBadBase64,
        ),
        (
            "tampered payload",
            {
                let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
                parts[1] = b64(with(&|c| c["sub"] = json!("admin")).to_string().as_bytes());
                parts.join(".")
            },
            JwtStatus::VerificationFail,
        ),
    ];
    for (name, token, want) in cases {
        assert_eq!(check(&a, &token), Err(want), "{name}");
    }
    // within the skew: still valid
    let late = sign(&k, with(&|c| c["exp"] = json!(NOW - 59)));
    assert!(
        check(&a, &late).is_ok(),
        "exp 59 s ago is within Envoy's skew"
    );
    let early = sign(&k, with(&|c| c["nbf"] = json!(NOW + 59)));
    assert!(
        check(&a, &early).is_ok(),
        "nbf in 59 s is within Envoy's skew"
    );
}

#[test]
fn envoy_status_codes_and_texts() {
    assert_eq!(JwtStatus::Expired.status_code(), 401);
    assert_eq!(JwtStatus::Expired.message(), "Jwt is expired");
    // Envoy's filter.cc: audiences are 403
    assert_eq!(JwtStatus::AudienceNotAllowed.status_code(), 403);
    assert_eq!(
        JwtStatus::VerificationFail.to_string(),
        "Jwt verification fails"
    );
}

#[test]
fn every_status_text_is_its_display() {
    use JwtStatus::*;
    for s in [
        BadFormat,
        HeaderBadBase64,
        HeaderBadJson,
        HeaderBadAlg,
        HeaderNotImplementedAlg,
        HeaderBadKid,
        PayloadBadBase64,
        PayloadBadJson,
        PayloadIssNotString,
        PayloadSubNotString,
        PayloadAudNotString,
        PayloadNbfNotInteger,
        PayloadExpNotInteger,
        SignatureBadBase64,
        UnknownIssuer,
        NotYetValid,
        Expired,
        AudienceNotAllowed,
        KidAlgMismatch,
        VerificationFail,
        JwksFetchFail,
    ] {
        assert_eq!(s.to_string(), s.message());
    }
}

#[test]
fn no_token_passes_without_principal() {
    let k = es256(None);
    let a = rule(json!({}), &jwks(&[&k]));
    let mut h = HeaderMap::new();
    assert_eq!(
        a.authenticate(&mut h, &Uri::from_static("/"), NOW),
        Ok(None)
    );
    // a header without the prefix is no token either
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        "Basic dXNlcjpwYXNz".parse().expect("a value"),
    );
    assert_eq!(
        a.authenticate(&mut h, &Uri::from_static("/"), NOW),
        Ok(None)
    );
}

#[test]
fn token_locations_header_param_cookie() {
    let k = es256(None);
    let t = sign(&k, claims());
    // Envoy's defaults: Authorization Bearer and ?access_token=
    let a = rule(json!({}), &jwks(&[&k]));
    let uri: Uri = format!("/p?x=1&access_token={t}").parse().expect("a uri");
    assert!(
        a.authenticate(&mut HeaderMap::new(), &uri, NOW)
            .expect("valid")
            .is_some()
    );
    // fromHeaders with a prefix
    let a = rule(
        json!({"fromHeaders": [{"name": "x-jwt-assertion", "prefix": "Token "}]}),
        &jwks(&[&k]),
    );
    let mut h = HeaderMap::new();
    h.insert(
        "x-jwt-assertion",
        format!("Token {t}").parse().expect("a value"),
    );
    assert!(
        a.authenticate(&mut h, &Uri::from_static("/"), NOW)
            .expect("valid")
            .is_some()
    );
    assert!(
        !h.contains_key("x-jwt-assertion"),
        "the token's header is removed"
    );
    // only the configured locations: Authorization is not read any more
    assert_eq!(check(&a, &t), Ok(None));
    // fromParams
    let a = rule(json!({"fromParams": ["my_token"]}), &jwks(&[&k]));
    let uri: Uri = format!("/p?my_token={t}").parse().expect("a uri");
    assert!(
        a.authenticate(&mut HeaderMap::new(), &uri, NOW)
            .expect("valid")
            .is_some()
    );
    // fromCookies
    let a = rule(json!({"fromCookies": ["session"]}), &jwks(&[&k]));
    let mut h = HeaderMap::new();
    h.insert(
        http::header::COOKIE,
        format!("a=b; session={t}").parse().expect("a value"),
    );
    assert!(
        a.authenticate(&mut h, &Uri::from_static("/"), NOW)
            .expect("valid")
            .is_some()
    );
    // an invalid token in a cookie is refused like any other
    let mut h = HeaderMap::new();
    h.insert(
        http::header::COOKIE,
        "session=a.b.c".parse().expect("a value"),
    );
    assert!(a.authenticate(&mut h, &Uri::from_static("/"), NOW).is_err());
}

#[test]
fn forward_original_token_keeps_the_header() {
    let k = es256(None);
    let t = sign(&k, claims());
    let a = rule(json!({}), &jwks(&[&k]));
    let mut h = bearer(&t);
    check_ok(&a, &mut h);
    assert!(
        !h.contains_key(http::header::AUTHORIZATION),
        "removed by default"
    );
    let a = rule(json!({"forwardOriginalToken": true}), &jwks(&[&k]));
    let mut h = bearer(&t);
    check_ok(&a, &mut h);
    assert!(
        h.contains_key(http::header::AUTHORIZATION),
        "kept when asked"
    );
}

fn check_ok(a: &Authenticator, h: &mut HeaderMap) -> RequestAuth {
    a.authenticate(h, &Uri::from_static("/"), NOW)
        .expect("valid")
        .expect("a principal")
}

#[test]
fn output_payload_and_claims_to_headers() {
    let k = es256(None);
    let t = sign(&k, claims());
    let a = rule(
        json!({
            "outputPayloadToHeader": "x-jwt-payload",
            "outputClaimToHeaders": [{"header": "x-jwt-foo", "claim": "foo"}, {"header": "x-jwt-exp", "claim": "exp"}, {"header": "x-jwt-groups", "claim": "groups"}]
        }),
        &jwks(&[&k]),
    );
    let mut h = bearer(&t);
    // a client's own copies never reach the application
    h.insert("x-jwt-foo", "forged".parse().expect("a value"));
    h.insert("x-jwt-groups", "admins".parse().expect("a value"));
    check_ok(&a, &mut h);
    let payload = t.split('.').nth(1).expect("a payload");
    assert_eq!(
        h["x-jwt-payload"], payload,
        "the payload, base64url as received"
    );
    assert_eq!(h.get_all("x-jwt-foo").iter().count(), 1);
    assert_eq!(h["x-jwt-foo"], "bar");
    assert_eq!(h["x-jwt-exp"], (NOW + 3600).to_string());
    assert!(
        !h.contains_key("x-jwt-groups"),
        "a list is not written (Envoy)"
    );
    // a request without a token gets no forged claim header either
    let mut h = HeaderMap::new();
    h.insert("x-jwt-foo", "forged".parse().expect("a value"));
    assert_eq!(
        a.authenticate(&mut h, &Uri::from_static("/"), NOW),
        Ok(None)
    );
    assert!(!h.contains_key("x-jwt-foo"));
}

#[test]
fn multiple_rules_match_the_token_by_issuer() {
    let k1 = es256(None);
    let k2 = es256(None);
    let a = compile_rules(json!([
        {"issuer": "one", "jwks": jwks(&[&k1])},
        {"issuer": "two", "jwks": jwks(&[&k2]), "audiences": ["x"]}
    ]))
    .expect("compiles");
    let t1 = sign(&k1, json!({"iss": "one", "sub": "a", "exp": NOW + 10}));
    assert_eq!(
        &*check(&a, &t1).expect("valid").expect("principal").principal,
        "one/a"
    );
    let t2 = sign(
        &k2,
        json!({"iss": "two", "sub": "b", "aud": "x", "exp": NOW + 10}),
    );
    assert_eq!(
        &*check(&a, &t2).expect("valid").expect("principal").principal,
        "two/b"
    );
    // issuer two's token signed with issuer one's key
    let forged = sign(&k1, json!({"iss": "two", "sub": "b", "aud": "x"}));
    assert_eq!(check(&a, &forged), Err(JwtStatus::VerificationFail));
    // a good token and a bad one: refused (Envoy: every token must be valid)
    let mut h = bearer(&t1);
    h.append(
        http::header::AUTHORIZATION,
        "Bearer a.b.c".parse().expect("a value"),
    );
    assert!(a.authenticate(&mut h, &Uri::from_static("/"), NOW).is_err());
}

#[test]
fn a_token_at_another_rules_location_is_of_an_unknown_issuer() {
    let k = es256(None);
    let a = compile_rules(json!([
        {"issuer": "one", "jwks": jwks(&[&k]), "fromHeaders": [{"name": "x-one"}]},
        {"issuer": "two", "jwks": jwks(&[&k]), "fromHeaders": [{"name": "x-two"}]}
    ]))
    .expect("compiles");
    let mut h = HeaderMap::new();
    let t = sign(&k, json!({"iss": "two", "sub": "b"}));
    h.insert("x-one", t.parse().expect("a value"));
    assert_eq!(
        a.authenticate(&mut h, &Uri::from_static("/"), NOW),
        Err(JwtStatus::UnknownIssuer)
    );
}

#[test]
fn what_cannot_be_enforced_is_refused_naming_the_field() {
    let k = es256(None);
    let cases = [
        (
            json!([{"issuer": ISS, "jwks": "{not json"}]),
            "spec.jwtRules[0].jwks",
        ),
        (
            json!([{"issuer": ISS, "jwks": r#"{"keys": []}"#}]),
            "spec.jwtRules[0].jwks",
        ),
        (json!([{"issuer": ISS}]), "spec.jwtRules[0]"),
        (
            json!([{"issuer": ISS, "jwksUri": "ftp://example.com/jwks.json"}]),
            "spec.jwtRules[0].jwksUri",
        ),
        (
            json!([{"issuer": ISS, "jwks": jwks(&[&k])}, {"issuer": ISS, "jwksUri": "file:///nonexistent/jwks.json"}]),
            "spec.jwtRules[1].jwksUri",
        ),
        (
            json!([{"jwksUri": "http://127.0.0.1/jwks"}]),
            "spec.jwtRules[0].issuer",
        ),
        (
            json!([{"issuer": ISS, "jwks": jwks(&[&k]), "spaceDelimitedClaims": ["scope"]}]),
            "spec.jwtRules[0].spaceDelimitedClaims",
        ),
    ];
    for (rules, field) in cases {
        let errs = compile_rules(rules.clone()).expect_err("refused");
        assert_eq!(errs[0].field, field, "{rules}");
        assert_eq!(errs[0].name, "jwt-example");
    }
}

#[test]
fn file_jwks_is_read_at_load() {
    let k = es256(None);
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[&k])).expect("written");
    let a =
        compile_rules(json!([{"issuer": ISS, "jwksUri": format!("file://{}", path.display())}]))
            .expect("compiles");
    assert!(check(&a, &sign(&k, claims())).expect("valid").is_some());
}

#[test]
fn an_http_jwks_not_fetched_yet_fails_closed() {
    let k = es256(None);
    let a = compile_rules(json!([{"issuer": ISS, "jwksUri": "http://127.0.0.1:1/jwks"}]))
        .expect("compiles");
    assert_eq!(a.remotes().len(), 1);
    assert_eq!(
        check(&a, &sign(&k, claims())),
        Err(JwtStatus::JwksFetchFail)
    );
    // a token-less request still passes
    assert_eq!(check_none(&a), Ok(None));
    a.remotes()[0].store_json(&jwks(&[&k])).expect("stored");
    assert!(check(&a, &sign(&k, claims())).expect("valid").is_some());
}

#[test]
fn a_reloaded_configuration_starts_with_the_keys_fetched_for_the_same_uri() {
    let k = es256(None);
    let rules = json!([{"issuer": ISS, "jwksUri": "http://jwks.example/keys"}]);
    let old = compile_rules(rules.clone()).expect("compiles");
    old.remotes()[0].store_json(&jwks(&[&k])).expect("stored");
    let new = compile_rules(rules).expect("compiles");
    assert_eq!(
        check(&new, &sign(&k, claims())),
        Err(JwtStatus::JwksFetchFail)
    );
    assert_eq!(new.inherit_keys(&old), 1);
    assert!(check(&new, &sign(&k, claims())).is_ok());
    // another URI inherits nothing
    let other = compile_rules(json!([{"issuer": ISS, "jwksUri": "http://other.example/keys"}]))
        .expect("compiles");
    assert_eq!(other.inherit_keys(&old), 0);
}

fn check_none(a: &Authenticator) -> Result<Option<RequestAuth>, JwtStatus> {
    a.authenticate(&mut HeaderMap::new(), &Uri::from_static("/"), NOW)
}

/// Key rotation: the refresher fetches again after Istio's interval, and a token signed by
/// the new key is accepted then (paused time, an in-memory JWKS server).
#[tokio::test(start_paused = true)]
async fn jwks_refresh_picks_up_a_rotated_key() {
    let old = es256(Some("old"));
    let new = es256(Some("new"));
    let a = compile_rules(json!([{"issuer": ISS, "jwksUri": "http://jwks.example/keys"}]))
        .expect("compiles");
    let served = Arc::new(Mutex::new(jwks(&[&old])));
    let fetches = Arc::new(Mutex::new(Vec::<String>::new()));
    let remote = a.remotes().remove(0);
    let (s, f) = (served.clone(), fetches.clone());
    tokio::spawn(RemoteJwks::refresh_loop(
        Arc::downgrade(&remote),
        JWKS_REFRESH_INTERVAL,
        move |uri, timeout| {
            let body = s.lock().expect("lock").clone();
            f.lock().expect("lock").push(uri);
            assert_eq!(timeout, DEFAULT_FETCH_TIMEOUT);
            async move { Ok::<_, String>(body) }
        },
    ));
    tokio::task::yield_now().await;
    assert_eq!(*fetches.lock().expect("lock"), ["http://jwks.example/keys"]);
    assert!(check(&a, &sign(&old, claims())).is_ok());
    *served.lock().expect("lock") = jwks(&[&new]);
    assert_eq!(
        check(&a, &sign(&new, claims())),
        Err(JwtStatus::KidAlgMismatch)
    );
    tokio::time::advance(JWKS_REFRESH_INTERVAL - Duration::from_secs(1)).await;
    tokio::task::yield_now().await;
    assert_eq!(
        fetches.lock().expect("lock").len(),
        1,
        "not before the interval"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    tokio::task::yield_now().await;
    assert_eq!(fetches.lock().expect("lock").len(), 2);
    assert!(
        check(&a, &sign(&new, claims())).is_ok(),
        "the rotated key is used"
    );
    assert_eq!(
        check(&a, &sign(&old, claims())),
        Err(JwtStatus::KidAlgMismatch)
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_fetch_is_retried_sooner_and_the_loop_ends_with_its_configuration() {
    let k = es256(None);
    let a = compile_rules(json!([{"issuer": ISS, "jwksUri": "http://jwks.example/keys"}]))
        .expect("compiles");
    let calls = Arc::new(Mutex::new(0u32));
    let remote = a.remotes().remove(0);
    let (c, body) = (calls.clone(), jwks(&[&k]));
    let task = tokio::spawn(RemoteJwks::refresh_loop(
        Arc::downgrade(&remote),
        JWKS_REFRESH_INTERVAL,
        move |_, _| {
            let mut n = c.lock().expect("lock");
            *n += 1;
            let r = if *n == 1 {
                Err("connection refused".to_string())
            } else {
                Ok(body.clone())
            };
            async move { r }
        },
    ));
    tokio::task::yield_now().await;
    assert!(!remote.is_loaded());
    tokio::time::advance(Duration::from_secs(1)).await;
    tokio::task::yield_now().await;
    assert!(remote.is_loaded(), "retried after 1 s");
    drop((remote, a));
    tokio::time::advance(JWKS_REFRESH_INTERVAL).await;
    task.await
        .expect("the loop ends once its configuration is gone");
}

#[tokio::test]
async fn the_layer_answers_like_envoy_and_passes_the_principal_on() {
    let k = es256(None);
    let a = rule(json!({"audiences": ["bookinfo.com"]}), &jwks(&[&k]));
    let seen = Arc::new(Mutex::new(None::<(Option<RequestAuth>, bool)>));
    let s = seen.clone();
    let app = ServiceBuilder::new()
        .layer(JwtAuthnLayer::new(a))
        .service_fn(move |req: Request<()>| {
            *s.lock().expect("lock") = Some((
                req.extensions().get::<RequestAuth>().cloned(),
                req.headers().contains_key(http::header::AUTHORIZATION),
            ));
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
        });
    // a forged extension from a client side layer never survives
    let mut req = Request::get("http://httpbin.foo/headers")
        .body(())
        .expect("a request");
    req.extensions_mut().insert(RequestAuth {
        principal: "forged/x".into(),
        claims: Arc::default(),
    });
    assert_eq!(
        app.clone().oneshot(req).await.expect("a response").status(),
        200
    );
    assert_eq!(*seen.lock().expect("lock"), Some((None, false)));

    let mut c = claims();
    c["aud"] = json!("bookinfo.com");
    let req = Request::get("http://httpbin.foo/headers")
        .header("authorization", format!("Bearer {}", sign(&k, c)))
        .body(())
        .expect("a request");
    assert_eq!(
        app.clone().oneshot(req).await.expect("a response").status(),
        200
    );
    let (auth, token_forwarded) = seen.lock().expect("lock").clone().expect("called");
    assert_eq!(
        auth.map(|a| a.principal),
        Some(format!("{ISS}/{ISS}").into())
    );
    assert!(!token_forwarded);

    let req = Request::get("http://httpbin.foo/headers")
        .header("authorization", format!("Bearer {}", sign(&k, claims())))
        .body(())
        .expect("a request");
    let res = app.clone().oneshot(req).await.expect("a response");
    assert_eq!(res.status(), 403, "no audience: Envoy's 403");
    let body = res.into_body().collect().await.expect("a body").to_bytes();
    assert_eq!(body, "Audiences in Jwt are not allowed");

    let req = Request::get("http://httpbin.foo/headers")
        .header("authorization", "Bearer invalidToken")
        .body(())
        .expect("a request");
    let res = app.oneshot(req).await.expect("a response");
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer realm=\"http://httpbin.foo/headers\", error=\"invalid_token\""
    );
    let body = res.into_body().collect().await.expect("a body").to_bytes();
    assert_eq!(
        body,
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
    );
}

#[tokio::test]
async fn a_cors_preflight_is_not_checked_as_istio_configures_envoy() {
    let k = es256(None);
    let app = ServiceBuilder::new()
        .layer(JwtAuthnLayer::new(rule(json!({}), &jwks(&[&k]))))
        .service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        });
    let preflight = |origin: &str| {
        Request::options("/")
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("authorization", "Bearer a.b.c")
            .body(())
            .expect("a request")
    };
    let res = app
        .clone()
        .oneshot(preflight("https://web.example.com"))
        .await;
    assert_eq!(res.expect("a response").status(), 200);
    // without an Origin it is no preflight: the bad token is refused
    let res = app.oneshot(preflight("")).await;
    assert_eq!(res.expect("a response").status(), 401);
}

/// RS256 (2048-bit): a token signed once with a key made for the purpose (its private key
/// was not kept), verified against the public key.
const RS256_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImJlbmNoLXJzYSJ9.eyJpc3MiOiJ0ZXN0aW5nQHNlY3VyZS5pc3Rpby5pbyIsInN1YiI6InRlc3RpbmdAc2VjdXJlLmlzdGlvLmlvIiwiZXhwIjo0MTAyNDQ0ODAwLCJmb28iOiJiYXIiLCJncm91cHMiOlsiZ3JvdXAxIiwiZ3JvdXAyIl19.Nc65oMVeVnjtuSVeNUUJmnGXGGlnrrpZQq6v3GEda7sdEpQ1JxHc4zpoizu1LlJs5lpzkrmbNOylMuWhBPbf1w3HhE1pgGf5QtnV2jszHzeNrL5hjZa6h-OElL_LKAN17Pj0Pmd03IGtgNXMt6T9cQFSF2a5uAv9LcDOSKbepA390_p-TR5AdRxWmxR9Z7kCBxM0mI2hiEB7IPiJDvNXINrfOGaYctdPBiCsQ2LzjA8_QDtd1kItbxxQ5zR6fmDQZZ6-PWKGgT1_H5TxewWEL6Tzpo8KMq2hNLhgEQEGkUGCcfxgYMXZ0o03YxzlWeMfzhf17SPyZroIAveS76hW0g";
const RS256_N: &str = "zRCMIK11AUOPVJ_IpC_iRxHyMDOnPSC9GwH8dy92wkfJmmRdebu7aNX4w3AIUYlXSL15kA-mbpqmQpP86grkRpdGkJg-FKFvE3AthULj-c5n9jmFr-eHAKxR-3thCXxjYkUR1c4eUlHpqraSbGSVadQTMVY1WKSnCbAbm4hvJfHctilnxhsl208pGFAxw_Edb-hA5OoAlBZzL1xYya6tStmJVu7xwPmN6lrcu2KaPhJVaukQv4wq51JkJuBHzC7xgWtWbajqCPZsrT5SLsIt5BtjODV5wgGp8sh3MtwfpwSmDMvFq42lKOCkL6uZzGcSxYGydwpc1rf484bcMEx3JQ";

#[test]
fn an_rs256_token_verifies_with_its_rsa_key_only() {
    let rsa = json!({"keys": [{"kty": "RSA", "kid": "bench-rsa", "n": RS256_N, "e": "AQAB"}]})
        .to_string();
    let a = rule(json!({}), &rsa);
    let auth = check(&a, RS256_TOKEN).expect("valid").expect("a principal");
    assert_eq!(auth.claim(&["groups"]), Some(&json!(["group1", "group2"])));
    // a flipped bit in the signature
    let at = RS256_TOKEN.len() - 10;
    let flipped = if &RS256_TOKEN[at..=at] == "A" {
        "B"
    } else {
        "A"
    };
    let bad = format!("{}{flipped}{}", &RS256_TOKEN[..at], &RS256_TOKEN[at + 1..]);
    assert_eq!(check(&a, &bad), Err(JwtStatus::VerificationFail));
    // an EC key of the same kid is not of the RSA family: no key fits
    let ec = es256(Some("bench-rsa"));
    let a = rule(json!({}), &jwks(&[&ec]));
    assert_eq!(check(&a, RS256_TOKEN), Err(JwtStatus::KidAlgMismatch));
}
