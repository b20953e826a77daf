//! Compiling the RequestAuthentications of a workload, and validating a request's tokens.

use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use mesh_core::model::security::{JwtRule, RequestAuthentication};
use serde_json::Value;

use super::{JwtStatus, RequestAuth};

/// Envoy's default clock skew for `exp` and `nbf` (`jwt_verify_lib` `kClockSkewInSecond`;
/// Istio sets no `clock_skew_seconds`).
pub const CLOCK_SKEW_SECS: u64 = 60;

/// Istio's default JWKS fetch timeout (`JWTRule.timeout`).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A RequestAuthentication with its place.
#[derive(Debug, Clone, Copy)]
pub struct RequestAuthRef<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its spec.
    pub spec: &'a RequestAuthentication,
}

/// The workload the RequestAuthentications are compiled for: the one AuthorizationPolicies
/// are compiled for ([`crate::authz::Workload`]), selected the same way.
pub type JwtWorkload<'a> = crate::authz::Workload<'a>;

/// A RequestAuthentication this version cannot enforce as written: the configuration is
/// refused (security fails closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RequestAuthentication {namespace}/{name}: {field}: {message}")]
pub struct JwtError {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub name: String,
    /// The field, from the document root (`spec.jwtRules[0].jwks`).
    pub field: String,
    /// Why.
    pub message: String,
}

/// The JWT rules that apply to one workload, compiled once per configuration load. See the
/// [module docs](super).
#[derive(Debug, Default)]
pub struct Authenticator {
    rules: Vec<Rule>,
    locations: Vec<Location>,
    /// Headers the filter writes (payload and claim headers): a client's own are removed
    /// first, as Envoy's `sanitizePayloadHeaders`.
    written: Vec<HeaderName>,
}

#[derive(Debug)]
struct Rule {
    issuer: Box<str>,
    audiences: Vec<Box<str>>,
    keys: Keys,
    forward: bool,
    payload_header: Option<HeaderName>,
    claim_headers: Vec<(HeaderName, Box<str>)>,
}

#[derive(Debug)]
enum Keys {
    Fixed(Arc<KeySet>),
    Remote(Arc<RemoteJwks>),
}

/// Where a token may be, and the rules (by index) whose issuers may use it.
#[derive(Debug)]
struct Location {
    at: Where,
    rules: Vec<usize>,
}

#[derive(Debug, PartialEq, Eq)]
enum Where {
    Header(HeaderName, Box<str>),
    Param(Box<str>),
    Cookie(Box<str>),
}

/// A JWKS fetched from `jwksUri` (`http(s)://` by the proxy, `file://` read from disk), with
/// its keys once a fetch has succeeded. Until then, a token of its issuer is refused with
/// `Jwks remote fetch is failed` (fail closed).
#[derive(Debug)]
pub struct RemoteJwks {
    uri: Box<str>,
    timeout: Duration,
    keys: ArcSwapOption<KeySet>,
}

/// The usable public keys of a JWKS.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<Key>,
}

struct Key {
    kid: Option<String>,
    alg: Option<Algorithm>,
    family: Family,
    key: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec256,
    Ec384,
    Ed,
}

// === impl Authenticator ===

impl Authenticator {
    /// Compiles the rules of the RequestAuthentications of `policies` that apply to
    /// `workload`, selected as Istio selects them for a sidecar (root namespace without
    /// selector: mesh-wide; the workload's namespace without selector: namespace-wide;
    /// `selector.matchLabels`: the matching workloads; `targetRef(s)`: gateways and
    /// waypoints only, skipped). Inline `jwks` and `file://` JWKS are read now; `http://`
    /// JWKS wait for [`RemoteJwks::store_json`].
    pub fn compile(
        policies: &[RequestAuthRef<'_>],
        workload: &JwtWorkload<'_>,
    ) -> Result<Authenticator, Vec<JwtError>> {
        let mut out = Authenticator::default();
        let mut errors = Vec::new();
        for p in policies.iter().filter(|p| applies(p, workload)) {
            for (i, r) in p.spec.jwt_rules.iter().enumerate() {
                match compile_rule(r, &format!("spec.jwtRules[{i}]")) {
                    Ok((rule, locations)) => {
                        let index = out.rules.len();
                        if let Some(h) = &rule.payload_header {
                            out.written.push(h.clone());
                        }
                        out.written
                            .extend(rule.claim_headers.iter().map(|(h, _)| h.clone()));
                        out.rules.push(rule);
                        for at in locations {
                            match out.locations.iter_mut().find(|l| l.at == at) {
                                Some(l) => l.rules.push(index),
                                None => out.locations.push(Location {
                                    at,
                                    rules: vec![index],
                                }),
                            }
                        }
                    }
                    Err((field, message)) => errors.push(JwtError {
                        namespace: p.namespace.to_string(),
                        name: p.name.to_string(),
                        field,
                        message,
                    }),
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// Whether no rule applies (every request passes untouched).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The JWKS to fetch (`jwksUri` of `http://`, `https://` or `file://`), for the
    /// refresher ([`RemoteJwks::refresh_loop`]).
    pub fn remotes(&self) -> Vec<Arc<RemoteJwks>> {
        self.rules
            .iter()
            .filter_map(|r| match &r.keys {
                Keys::Remote(k) => Some(k.clone()),
                Keys::Fixed(_) => None,
            })
            .collect()
    }

    /// Starts each remote JWKS of `self` with the keys `previous` (the configuration this
    /// one replaces) fetched from the same URI, so a reload does not refuse tokens while
    /// the new configuration's first fetch is under way (or failing); the next successful
    /// fetch replaces them. Returns how many remotes were seeded.
    pub fn inherit_keys(&self, previous: &Authenticator) -> usize {
        let old = previous.remotes();
        let mut seeded = 0;
        for r in self.remotes() {
            if r.is_loaded() {
                continue;
            }
            if let Some(keys) = old
                .iter()
                .find(|o| o.uri == r.uri)
                .and_then(|o| o.keys.load_full())
            {
                r.keys.store(Some(keys));
                seeded += 1;
            }
        }
        seeded
    }

    /// Envoy's `jwt_authn` with Istio's requirement (`requires_any` of the rules, or
    /// `allow_missing`): without a token, `Ok(None)`; with tokens, every one must be valid
    /// (Envoy's authenticator: "a request has a good token and a bad one" is refused), and
    /// the first is the request's identity. `now` is the Unix time in seconds.
    ///
    /// On success, the headers are rewritten as Envoy does: client-sent payload and claim
    /// headers removed, `outputPayloadToHeader` and `outputClaimToHeaders` written, and the
    /// token's header removed unless `forwardOriginalToken` (tokens in a query parameter or
    /// a cookie stay, as Envoy leaves them).
    pub fn authenticate(
        &self,
        headers: &mut HeaderMap,
        uri: &Uri,
        now: u64,
    ) -> Result<Option<RequestAuth>, JwtStatus> {
        for h in &self.written {
            headers.remove(h);
        }
        let tokens = self.extract(headers, uri);
        if tokens.is_empty() {
            return Ok(None);
        }
        let mut first: Option<RequestAuth> = None;
        let mut outputs: Vec<(HeaderName, HeaderValue)> = Vec::new();
        let mut remove: Vec<HeaderName> = Vec::new();
        for (loc, token) in &tokens {
            let (rule, auth, payload) = self.verify(loc, token, now)?;
            if let Some(h) = &rule.payload_header
                && let Ok(v) = HeaderValue::from_str(payload)
            {
                outputs.push((h.clone(), v));
            }
            for (h, claim) in &rule.claim_headers {
                if let Some(v) = claim_header_value(auth.claims.get(&**claim)) {
                    outputs.push((h.clone(), v));
                }
            }
            if !rule.forward
                && let Where::Header(h, _) = &loc.at
            {
                remove.push(h.clone());
            }
            first.get_or_insert(auth);
        }
        for h in remove {
            headers.remove(h);
        }
        for (h, v) in outputs {
            headers.append(h, v);
        }
        Ok(first)
    }

    /// The tokens of the request, with the location each was found at.
    fn extract<'a>(&'a self, headers: &'a HeaderMap, uri: &'a Uri) -> Vec<(&'a Location, &'a str)> {
        let mut out: Vec<(&Location, &str)> = Vec::new();
        for loc in &self.locations {
            match &loc.at {
                Where::Header(name, prefix) => {
                    for v in headers.get_all(name) {
                        if let Some(t) = v.to_str().ok().and_then(|v| token_after(v, prefix)) {
                            out.push((loc, t));
                        }
                    }
                }
                Where::Param(name) => {
                    for (k, v) in uri
                        .query()
                        .unwrap_or_default()
                        .split('&')
                        .filter_map(|kv| kv.split_once('='))
                    {
                        if k == &**name && !v.is_empty() {
                            out.push((loc, v));
                        }
                    }
                }
                Where::Cookie(name) => {
                    for v in headers.get_all(http::header::COOKIE) {
                        let Ok(v) = v.to_str() else { continue };
                        for (k, t) in v.split(';').filter_map(|kv| kv.trim().split_once('=')) {
                            if k == &**name && !t.is_empty() {
                                out.push((loc, t.trim_matches('"')));
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// `jwt_verify_lib`'s order: parse, issuer, time (with skew), audience, then the
    /// signature against the issuer's keys.
    fn verify<'t>(
        &self,
        loc: &Location,
        token: &'t str,
        now: u64,
    ) -> Result<(&Rule, RequestAuth, &'t str), JwtStatus> {
        let parsed = Parsed::parse(token)?;
        let rule = loc
            .rules
            .iter()
            .map(|&i| &self.rules[i])
            .find(|r| *r.issuer == *parsed.issuer)
            .ok_or(JwtStatus::UnknownIssuer)?;
        if let Some(nbf) = parsed.nbf
            && nbf > now.saturating_add(CLOCK_SKEW_SECS)
        {
            return Err(JwtStatus::NotYetValid);
        }
        if let Some(exp) = parsed.exp
            && exp.saturating_add(CLOCK_SKEW_SECS) < now
        {
            return Err(JwtStatus::Expired);
        }
        if !rule.audiences.is_empty()
            && !audiences(&parsed.claims).any(|a| rule.audiences.iter().any(|r| audience_eq(r, a)))
        {
            return Err(JwtStatus::AudienceNotAllowed);
        }
        let keys = match &rule.keys {
            Keys::Fixed(k) => k.clone(),
            Keys::Remote(r) => r.keys.load_full().ok_or(JwtStatus::JwksFetchFail)?,
        };
        keys.verify(&parsed)?;
        let sub = parsed
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let auth = RequestAuth {
            principal: format!("{}/{sub}", parsed.issuer).into(),
            claims: Arc::new(parsed.claims),
        };
        Ok((rule, auth, parsed.payload))
    }
}

/// Whether Istio applies `p` to the sidecar of `w` (as AuthorizationPolicy's selection).
fn applies(p: &RequestAuthRef<'_>, w: &JwtWorkload<'_>) -> bool {
    w.selects(
        p.namespace,
        p.spec.selector.as_ref(),
        p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty(),
    )
}

type Refusal = (String, String);

fn compile_rule(r: &JwtRule, at: &str) -> Result<(Rule, Vec<Where>), Refusal> {
    let header = |name: &str, field: String| {
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| (field, format!("{name:?} is not a valid header name")))
    };
    if r.issuer.is_empty() {
        return Err((
            format!("{at}.issuer"),
            "a rule without issuer (found through jwksUri only) is not enforced by this version: \
             refused, because security fails closed"
                .into(),
        ));
    }
    if !r.space_delimited_claims.is_empty() {
        return Err((
            format!("{at}.spaceDelimitedClaims"),
            "not enforced by this version: refused, because security fails closed".into(),
        ));
    }
    let timeout = r
        .timeout
        .map(|t| t.0)
        .filter(|t| !t.is_zero())
        .unwrap_or(DEFAULT_FETCH_TIMEOUT);
    let keys = match (
        r.jwks.as_deref().filter(|j| !j.is_empty()),
        r.jwks_uri.as_deref().filter(|u| !u.is_empty()),
    ) {
        // Istio: inline `jwks` wins over `jwksUri`
        (Some(jwks), _) => Keys::Fixed(Arc::new(
            KeySet::from_json(jwks).map_err(|e| (format!("{at}.jwks"), e))?,
        )),
        (None, Some(uri)) => {
            let remote = RemoteJwks::new(uri, timeout).map_err(|e| (format!("{at}.jwksUri"), e))?;
            if let Some(path) = remote.file_path() {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    (
                        format!("{at}.jwksUri"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                remote
                    .store_json(&text)
                    .map_err(|e| (format!("{at}.jwksUri"), format!("{}: {e}", path.display())))?;
            }
            Keys::Remote(Arc::new(remote))
        }
        (None, None) => {
            return Err((
                at.to_string(),
                "neither jwks nor jwksUri: OpenID discovery from the issuer is not enforced by \
                 this version: refused, because security fails closed"
                    .into(),
            ));
        }
    };
    let mut locations = Vec::new();
    for (i, h) in r.from_headers.iter().enumerate() {
        locations.push(Where::Header(
            header(&h.name, format!("{at}.fromHeaders[{i}].name"))?,
            h.prefix.clone().unwrap_or_default().into(),
        ));
    }
    locations.extend(
        r.from_params
            .iter()
            .map(|p| Where::Param(p.as_str().into())),
    );
    locations.extend(
        r.from_cookies
            .iter()
            .map(|c| Where::Cookie(c.as_str().into())),
    );
    if locations.is_empty() {
        // Envoy's default locations
        locations.push(Where::Header(http::header::AUTHORIZATION, "Bearer ".into()));
        locations.push(Where::Param("access_token".into()));
    }
    let payload_header = match r
        .output_payload_to_header
        .as_deref()
        .filter(|h| !h.is_empty())
    {
        Some(h) => Some(header(h, format!("{at}.outputPayloadToHeader"))?),
        None => None,
    };
    let mut claim_headers = Vec::new();
    for (i, c) in r.output_claim_to_headers.iter().enumerate() {
        claim_headers.push((
            header(&c.header, format!("{at}.outputClaimToHeaders[{i}].header"))?,
            c.claim.as_str().into(),
        ));
    }
    let rule = Rule {
        issuer: r.issuer.as_str().into(),
        audiences: r.audiences.iter().map(|a| a.as_str().into()).collect(),
        keys,
        forward: r.forward_original_token,
        payload_header,
        claim_headers,
    };
    Ok((rule, locations))
}

/// The token in a header value after `prefix` (Envoy's `extractJWT`: the prefix, then the
/// characters a JWT may hold).
fn token_after<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = value.strip_prefix(prefix)?;
    let end = rest
        .find(|c: char| {
            !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=' | '+' | '/'))
        })
        .unwrap_or(rest.len());
    let t = &rest[..end];
    (!t.is_empty()).then_some(t)
}

/// Envoy's audience check ignores a scheme and a trailing slash (`jwt_verify_lib`
/// `CheckAudience`: `http://example.com/` equals `example.com`).
fn audience_eq(a: &str, b: &str) -> bool {
    fn norm(s: &str) -> &str {
        let s = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
            .unwrap_or(s);
        s.strip_suffix('/').unwrap_or(s)
    }
    norm(a) == norm(b)
}

fn audiences(claims: &serde_json::Map<String, Value>) -> impl Iterator<Item = &str> {
    let aud = claims.get("aud");
    let one = aud.and_then(Value::as_str);
    let many = aud
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    one.into_iter().chain(many)
}

/// Envoy's `addJWTClaimToHeader`: strings, integers (as integers), other numbers, and
/// booleans; other kinds are not written.
fn claim_header_value(v: Option<&Value>) -> Option<HeaderValue> {
    let text = match v? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!text.is_empty())
        .then(|| HeaderValue::from_str(&text).ok())
        .flatten()
}

// === token parsing ===

/// A token split and decoded (`jwt_verify_lib` `Jwt::parseFromString`).
struct Parsed<'t> {
    alg: Algorithm,
    kid: Option<String>,
    issuer: String,
    claims: serde_json::Map<String, Value>,
    nbf: Option<u64>,
    exp: Option<u64>,
    /// `header.payload`, what the signature signs.
    signed: &'t str,
    /// The payload, base64url as received.
    payload: &'t str,
    signature: &'t str,
}

impl<'t> Parsed<'t> {
    fn parse(token: &'t str) -> Result<Parsed<'t>, JwtStatus> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtStatus::BadFormat);
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part.trim_end_matches('='));
        let header = decode(h).map_err(|_| JwtStatus::HeaderBadBase64)?;
        let header: serde_json::Map<String, Value> =
            serde_json::from_slice(&header).map_err(|_| JwtStatus::HeaderBadJson)?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(JwtStatus::HeaderBadAlg)?;
        let alg = match Algorithm::from_str(alg) {
            // `none` and the HMAC algorithms are refused: only public keys verify here
            Ok(a) if family_of(a).is_some() => a,
            _ => return Err(JwtStatus::HeaderNotImplementedAlg),
        };
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(JwtStatus::HeaderBadKid),
        };
        let payload = decode(p).map_err(|_| JwtStatus::PayloadBadBase64)?;
        let claims: serde_json::Map<String, Value> =
            serde_json::from_slice(&payload).map_err(|_| JwtStatus::PayloadBadJson)?;
        // jwt_verify_lib `Jwt::parseFromString`: the registered claims' types
        let issuer = match claims.get("iss") {
            None => String::new(),
            Some(Value::String(i)) => i.clone(),
            Some(_) => return Err(JwtStatus::PayloadIssNotString),
        };
        if claims.get("sub").is_some_and(|v| !v.is_string()) {
            return Err(JwtStatus::PayloadSubNotString);
        }
        match claims.get("aud") {
            None | Some(Value::String(_)) => {}
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => {}
            Some(_) => return Err(JwtStatus::PayloadAudNotString),
        }
        let time = |k: &str, bad: JwtStatus| -> Result<Option<u64>, JwtStatus> {
            match claims.get(k) {
                None => Ok(None),
                Some(v) => match (v.as_u64(), v.as_f64()) {
                    (Some(t), _) => Ok(Some(t)),
                    // a whole number written as a float
                    (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < 1.8e19 => {
                        Ok(Some(f as u64))
                    }
                    _ => Err(bad),
                },
            }
        };
        let nbf = time("nbf", JwtStatus::PayloadNbfNotInteger)?;
        let exp = time("exp", JwtStatus::PayloadExpNotInteger)?;
        if decode(s).is_err() {
            return Err(JwtStatus::SignatureBadBase64);
        }
        Ok(Parsed {
            alg,
            kid,
            issuer,
            claims,
            nbf,
            exp,
            signed: &token[..h.len() + 1 + p.len()],
            payload: p,
            signature: s,
        })
    }
}

fn family_of(alg: Algorithm) -> Option<Family> {
    Some(match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Family::Rsa,
        Algorithm::ES256 => Family::Ec256,
        Algorithm::ES384 => Family::Ec384,
        Algorithm::EdDSA => Family::Ed,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => return None,
    })
}

// === impl KeySet ===

impl KeySet {
    /// The usable public keys of a JWKS document (RFC 7517 `{"keys": [...]}`): RSA, EC
    /// P-256 and P-384, Ed25519; other keys are skipped, and a set with none is an error
    /// (Envoy's `Jwks doesn't have any valid public key`).
    pub fn from_json(text: &str) -> Result<KeySet, String> {
        let doc: Value =
            serde_json::from_str(text).map_err(|e| format!("Jwks is an invalid JSON: {e}"))?;
        let keys = doc
            .get("keys")
            .ok_or_else(|| "Jwks does not have [keys] field".to_string())?
            .as_array()
            .ok_or_else(|| "[keys] in Jwks is not an array".to_string())?;
        let keys: Vec<Key> = keys
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter_map(|jwk| Key::of(&jwk))
            .collect();
        if keys.is_empty() {
            return Err("Jwks doesn't have any valid public key".into());
        }
        Ok(KeySet { keys })
    }

    /// `jwt_verify_lib` `verifyJwtWithoutTimeChecking`: a key whose `kid` (when both have
    /// one) and `alg` (when the key has one) fit the token's, of the algorithm's family,
    /// must verify the signature.
    fn verify(&self, t: &Parsed<'_>) -> Result<(), JwtStatus> {
        let family = family_of(t.alg);
        let mut tried = false;
        for k in &self.keys {
            if t.kid.is_some() && k.kid.is_some() && k.kid != t.kid {
                continue;
            }
            if k.alg.is_some_and(|a| a != t.alg) || Some(k.family) != family {
                continue;
            }
            tried = true;
            if jsonwebtoken::crypto::verify(t.signature, t.signed.as_bytes(), &k.key, t.alg)
                .unwrap_or(false)
            {
                return Ok(());
            }
        }
        Err(if tried {
            JwtStatus::VerificationFail
        } else {
            JwtStatus::KidAlgMismatch
        })
    }

    /// How many usable keys the set has.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set has no usable key (never, once built).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

impl Key {
    fn of(jwk: &Jwk) -> Option<Key> {
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => Family::Ec256,
                EllipticCurve::P384 => Family::Ec384,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Family::Ed,
            _ => return None,
        };
        let alg = match jwk.common.key_algorithm {
            Some(a) => Some(Algorithm::from_str(&a.to_string()).ok()?),
            None => None,
        };
        if alg.is_some_and(|a| family_of(a) != Some(family)) {
            return None;
        }
        Some(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            family,
            key: DecodingKey::from_jwk(jwk).ok()?,
        })
    }
}

// === impl RemoteJwks ===

impl RemoteJwks {
    /// A JWKS at `uri` (`http://`, `https://` or `file://`), fetched within `timeout`.
    /// Another scheme is an error.
    pub fn new(uri: &str, timeout: Duration) -> Result<RemoteJwks, String> {
        let lower = uri.to_ascii_lowercase();
        if !["http://", "https://", "file://"]
            .iter()
            .any(|p| lower.starts_with(p))
        {
            return Err(format!(
                "jwksUri {uri}: only http://, https:// and file:// are fetched: refused, \
                 because security fails closed"
            ));
        }
        Ok(RemoteJwks {
            uri: uri.into(),
            timeout,
            keys: ArcSwapOption::empty(),
        })
    }

    /// The URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The fetch timeout (`JWTRule.timeout`; default 5 s).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The file of a `file://` URI.
    pub fn file_path(&self) -> Option<PathBuf> {
        let rest = self
            .uri
            .get(..7)?
            .eq_ignore_ascii_case("file://")
            .then(|| &self.uri[7..])?;
        Some(PathBuf::from(rest))
    }

    /// Replaces the keys with those of a fetched JWKS document; on an error the keys in
    /// use stay.
    pub fn store_json(&self, text: &str) -> Result<(), String> {
        let keys = KeySet::from_json(text)?;
        self.keys.store(Some(Arc::new(keys)));
        Ok(())
    }

    /// Whether a fetch has succeeded.
    pub fn is_loaded(&self) -> bool {
        self.keys.load().is_some()
    }

    /// Keeps the keys of `remote` fresh while it lives (a reload drops it, and the loop
    /// ends at its next turn): fetches with `fetch(uri, timeout)` now and then every
    /// `interval` (Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`, 20 minutes); after a failed
    /// fetch, tries again sooner (1 s, doubling up to `interval`). A `file://` URI is read
    /// from disk instead.
    pub async fn refresh_loop<F, Fut>(
        remote: std::sync::Weak<RemoteJwks>,
        interval: Duration,
        fetch: F,
    ) where
        F: Fn(String, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<String, String>>,
    {
        let mut backoff = Duration::from_secs(1);
        loop {
            let Some(r) = remote.upgrade() else { return };
            let got = match r.file_path() {
                Some(path) => std::fs::read_to_string(&path).map_err(|e| e.to_string()),
                None => fetch(r.uri.to_string(), r.timeout).await,
            };
            let wait = match got.and_then(|text| r.store_json(&text)) {
                Ok(()) => {
                    backoff = Duration::from_secs(1);
                    interval
                }
                Err(e) => {
                    tracing::warn!(uri = %r.uri, error = %e, "cannot fetch the JWKS; tokens of its issuer are refused until a fetch succeeds");
                    let w = backoff.min(interval);
                    backoff = (backoff * 2).min(interval);
                    w
                }
            };
            drop(r);
            tokio::time::sleep(wait).await;
        }
    }
}

/// The distinct issuers of the rules (for diagnostics).
impl Authenticator {
    /// The issuers the rules accept, each once.
    pub fn issuers(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.rules
            .iter()
            .map(|r| &*r.issuer)
            .filter(|i| seen.insert(*i))
            .collect()
    }
}
