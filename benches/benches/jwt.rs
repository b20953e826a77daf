//! JWT validation: the cost per request of `mesh_tls::jwt::Authenticator::authenticate` (what
//! the inbound listener's `JwtAuthn` layer does for a request with a token) for an ES256
//! token (a P-256 key made at bench time with ring) and an RS256 one (2048-bit; a token
//! signed once, its public key inline: no private key here), and for a request without a
//! token. Each iteration parses the token, checks issuer, time and audience, verifies the
//! signature, writes a claim header and removes the token, on a fresh copy of the headers
//! (the copy is not measured). Envoy's `jwt_authn` caches verified tokens; this version
//! verifies every request.
use std::hint::black_box;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Uri};
use mesh_core::model::security::RequestAuthentication;
use mesh_core::selector::Labels;
use mesh_tls::jwt::{Authenticator, JwtWorkload, RequestAuthRef};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

const ISS: &str = "testing@secure.istio.io";
/// The bench's clock (Unix seconds); the tokens expire in 2100.
const NOW: u64 = 1_800_000_000;

/// An RS256 token (kid `bench-rsa`, `exp` 2100, Istio's demo claims) and its key's modulus.
const RS256_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImJlbmNoLXJzYSJ9.eyJpc3MiOiJ0ZXN0aW5nQHNlY3VyZS5pc3Rpby5pbyIsInN1YiI6InRlc3RpbmdAc2VjdXJlLmlzdGlvLmlvIiwiZXhwIjo0MTAyNDQ0ODAwLCJmb28iOiJiYXIiLCJncm91cHMiOlsiZ3JvdXAxIiwiZ3JvdXAyIl19.Nc65oMVeVnjtuSVeNUUJmnGXGGlnrrpZQq6v3GEda7sdEpQ1JxHc4zpoizu1LlJs5lpzkrmbNOylMuWhBPbf1w3HhE1pgGf5QtnV2jszHzeNrL5hjZa6h-OElL_LKAN17Pj0Pmd03IGtgNXMt6T9cQFSF2a5uAv9LcDOSKbepA390_p-TR5AdRxWmxR9Z7kCBxM0mI2hiEB7IPiJDvNXINrfOGaYctdPBiCsQ2LzjA8_QDtd1kItbxxQ5zR6fmDQZZ6-PWKGgT1_H5TxewWEL6Tzpo8KMq2hNLhgEQEGkUGCcfxgYMXZ0o03YxzlWeMfzhf17SPyZroIAveS76hW0g";
const RS256_N: &str = "zRCMIK11AUOPVJ_IpC_iRxHyMDOnPSC9GwH8dy92wkfJmmRdebu7aNX4w3AIUYlXSL15kA-mbpqmQpP86grkRpdGkJg-FKFvE3AthULj-c5n9jmFr-eHAKxR-3thCXxjYkUR1c4eUlHpqraSbGSVadQTMVY1WKSnCbAbm4hvJfHctilnxhsl208pGFAxw_Edb-hA5OoAlBZzL1xYya6tStmJVu7xwPmN6lrcu2KaPhJVaukQv4wq51JkJuBHzC7xgWtWbajqCPZsrT5SLsIt5BtjODV5wgGp8sh3MtwfpwSmDMvFq42lKOCkL6uZzGcSxYGydwpc1rf484bcMEx3JQ";

/// A P-256 key made now: its public JWK, an ES256 token with Istio's demo claims, and the
/// public key's bytes.
fn es256() -> (serde_json::Value, String, Vec<u8>) {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("a P-256 key");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("the key parses");
    let p = pair.public_key().as_ref();
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "bench-ec",
        "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..])});
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "bench-ec"});
    let claims = serde_json::json!({"iss": ISS, "sub": ISS, "exp": 4102444800u64, "foo": "bar", "groups": ["group1", "group2"]});
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = pair.sign(&rng, signed.as_bytes()).expect("signed");
    (
        jwk,
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())),
        p.to_vec(),
    )
}

/// Istio's task rule for `ISS` with both keys and a claim header.
fn authenticator(ec: serde_json::Value) -> Authenticator {
    let rsa = serde_json::json!({"kty": "RSA", "kid": "bench-rsa", "alg": "RS256", "n": RS256_N, "e": "AQAB"});
    let jwks = serde_json::json!({"keys": [ec, rsa]}).to_string();
    let spec: RequestAuthentication = serde_json::from_value(serde_json::json!({
        "jwtRules": [{
            "issuer": ISS,
            "jwks": jwks,
            "outputClaimToHeaders": [{"header": "x-jwt-claim-foo", "claim": "foo"}]
        }]
    }))
    .expect("a valid spec");
    let labels = Labels::default();
    let w = JwtWorkload {
        root_namespace: "istio-system",
        namespace: "default",
        labels: &labels,
    };
    Authenticator::compile(
        &[RequestAuthRef {
            namespace: "default",
            name: "jwt-example",
            spec: &spec,
        }],
        &w,
    )
    .expect("the rule compiles")
}

fn headers(token: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", "reviews:9080".parse().expect("a value"));
    h.insert("user-agent", "bench".parse().expect("a value"));
    if let Some(t) = token {
        h.insert(
            "authorization",
            format!("Bearer {t}").parse().expect("a value"),
        );
    }
    h
}

fn bench(c: &mut Criterion) {
    let (ec, es_token, ec_public) = es256();
    let a = authenticator(ec);
    let uri = Uri::from_static("/productpage");
    for (name, token) in [
        ("jwt/authenticate/ES256", Some(es_token.as_str())),
        ("jwt/authenticate/RS256", Some(RS256_TOKEN)),
        ("jwt/authenticate/no token", None),
    ] {
        let h = headers(token);
        let ok = a.authenticate(&mut h.clone(), &uri, NOW).expect("valid");
        assert_eq!(ok.is_some(), token.is_some(), "{name}");
        c.bench_function(name, |b| {
            b.iter_batched_ref(
                || h.clone(),
                |h| black_box(a.authenticate(h, &uri, NOW)),
                BatchSize::SmallInput,
            )
        });
    }
    // the signature check alone (ring), to tell the crypto from the rest
    let n = URL_SAFE_NO_PAD.decode(RS256_N).expect("base64url");
    for (name, token) in [
        ("jwt/ring verify alone/ES256", es_token.as_str()),
        ("jwt/ring verify alone/RS256", RS256_TOKEN),
    ] {
        let (signed, sig) = token.rsplit_once('.').expect("three sections");
        let sig = URL_SAFE_NO_PAD.decode(sig).expect("base64url");
        let verify = || -> bool {
            if name.ends_with("ES256") {
                ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ECDSA_P256_SHA256_FIXED,
                    &ec_public,
                )
                .verify(signed.as_bytes(), &sig)
                .is_ok()
            } else {
                ring::signature::RsaPublicKeyComponents {
                    n: n.as_slice(),
                    e: &[1u8, 0, 1][..],
                }
                .verify(
                    &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                    signed.as_bytes(),
                    &sig,
                )
                .is_ok()
            }
        };
        assert!(verify(), "{name}");
        c.bench_function(name, |b| b.iter(|| black_box(verify())));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
