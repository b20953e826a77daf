//! The support table itself: one row per field of every kind the loader parses.
//!
//! Keep it in step with the model (`crate::model`): a test compares it with the fields the
//! loader accepts, and another with `docs/istio-support.md`. When a feature lands, flip its
//! rows to [`Status::Enforced`] in the same change.

use saphyr::{MarkedYaml, YamlData};

use super::Shape::{Leaf, Map, Seq, Struct};
use super::{Area, Custom, FieldDef, KindDef, Shape, Status, TypeDef, Values, Verdict};
use crate::model::Kind;
use crate::yamlde::{key_text, resolve};

const fn field(name: &'static str, shape: Shape, status: Status, note: &'static str) -> FieldDef {
    FieldDef {
        name,
        shape,
        status,
        note,
    }
}

/// Every kind, in `Kind::ALL` order.
pub(super) static KINDS: &[KindDef] = &[
    KindDef {
        kind: Kind::VirtualService,
        status: Status::Enforced,
        note: "",
        spec: &VIRTUAL_SERVICE,
    },
    KindDef {
        kind: Kind::DestinationRule,
        status: Status::Enforced,
        note: "",
        spec: &DESTINATION_RULE,
    },
    KindDef {
        kind: Kind::ServiceEntry,
        status: Status::Enforced,
        note: "",
        spec: &SERVICE_ENTRY,
    },
    KindDef {
        kind: Kind::WorkloadEntry,
        status: Status::Enforced,
        note: "",
        spec: &WORKLOAD_ENTRY,
    },
    KindDef {
        kind: Kind::Gateway,
        status: Status::Enforced,
        note: "served by the proxy whose bootstrap workload a Gateway selects: HTTP, HTTPS (terminated) and ISTIO_MUTUAL servers; TCP servers, TLS servers that terminate TLS (then tcp routes), TLS/HTTPS PASSTHROUGH servers (tls routes by SNI) and AUTO_PASSTHROUGH servers (by the SNI's cluster name) as L4 listeners",
        spec: &GATEWAY,
    },
    KindDef {
        kind: Kind::Sidecar,
        status: Status::Enforced,
        note: "",
        spec: &SIDECAR,
    },
    KindDef {
        kind: Kind::PeerAuthentication,
        status: Status::Enforced,
        note: "",
        spec: &PEER_AUTHENTICATION,
    },
    KindDef {
        kind: Kind::AuthorizationPolicy,
        status: Status::Custom(&AUTHZ_KIND),
        note: "",
        spec: &AUTHORIZATION_POLICY,
    },
    KindDef {
        kind: Kind::RequestAuthentication,
        status: Status::Enforced,
        note: "",
        spec: &REQUEST_AUTHENTICATION,
    },
    KindDef {
        kind: Kind::ProxyBootstrap,
        status: Status::Enforced,
        note: "",
        spec: &PROXY_BOOTSTRAP,
    },
    KindDef {
        kind: Kind::LocalRateLimit,
        status: Status::Enforced,
        note: "on the outbound listener (the inbound listener has no limit yet)",
        spec: &LOCAL_RATE_LIMIT,
    },
    KindDef {
        kind: Kind::Telemetry,
        status: Status::Enforced,
        note: "merged as Istio's (root namespace, then the workload's namespace, then the resource selecting it) over ProxyBootstrap's `accessLog` and `tracing`, Istio's MeshConfig; mode `CLIENT` is the outbound listener and gateways, `SERVER` the inbound listener",
        spec: &TELEMETRY,
    },
];

// === statuses that depend on the value ===

/// DestinationRule `tls.mode`: plaintext, Istio's mTLS with the workload's certificate
/// (refused by mesh-proxy's security step when the proxy has no identity), or TLS
/// origination from files (mesh-tls `origination`).
static TLS_MODE: Values = Values {
    cases: &[
        ("DISABLE", Verdict::Enforced),
        ("ISTIO_MUTUAL", Verdict::Enforced),
        ("SIMPLE", Verdict::Enforced),
        ("MUTUAL", Verdict::Enforced),
    ],
    otherwise: Verdict::Refused(Area::Security),
};

/// PeerAuthentication `mtls.mode` (and `portLevelMtls`): the inbound listeners'.
static MTLS_MODE: Values = Values {
    cases: &[
        ("DISABLE", Verdict::Enforced),
        ("PERMISSIVE", Verdict::Enforced),
        ("UNSET", Verdict::Enforced),
        // refused by the pipeline when it applies to this workload and the proxy has no
        // identity (mesh-proxy's security step)
        ("STRICT", Verdict::Enforced),
    ],
    otherwise: Verdict::Refused(Area::Security),
};

/// ProxyBootstrap `outbound.protocol`: the listener always detects the protocol.
static LISTENER_PROTOCOL: Values = Values {
    cases: &[("auto", Verdict::Enforced)],
    otherwise: Verdict::NotYet(Area::Later),
};

/// ServiceEntry `resolution`.
static RESOLUTION: Values = Values {
    cases: &[("DYNAMIC_DNS", Verdict::NotYet(Area::Later))],
    otherwise: Verdict::Enforced,
};

/// AuthorizationPolicy: enforced on the inbound listener (mesh-tls `authz`); a dry-run
/// policy (`istio.io/dry-run: "true"`) is not enforced, as Istio's.
static AUTHZ_KIND: Custom = Custom {
    doc: "enforced on the inbound listener (mesh-tls `authz`, Istio's selection and evaluation order); a dry-run policy (annotation `istio.io/dry-run: \"true\"`) is accepted with a warning and not enforced, as Istio only logs its decisions",
    check: authz_kind,
};

/// AuthorizationPolicy `action`: CUSTOM needs an external authorizer, which the proxy has
/// none of.
static AUTHZ_ACTION: Values = Values {
    cases: &[
        ("ALLOW", Verdict::Enforced),
        ("DENY", Verdict::Enforced),
        ("AUDIT", Verdict::Enforced),
    ],
    otherwise: Verdict::Refused(Area::Security),
};

/// AuthorizationPolicy `when[].key`: Istio's HTTP keys.
static AUTHZ_CONDITION_KEY: Custom = Custom {
    doc: "`request.headers[...]`, `source.ip`, `remote.ip`, `source.namespace`, `source.principal`, `source.serviceAccount`, `source.trustDomain`, `destination.ip`, `destination.port`, `connection.sni`, and the JWT's `request.auth.principal`, `request.auth.audiences`, `request.auth.presenter` and `request.auth.claims[...]` (nested `[a][b]`) are enforced; any other key (`experimental.envoy.filters.*`) is refused",
    check: authz_condition_key,
};

/// RequestAuthentication `jwksUri`: fetched over http(s), or read from a file.
static JWKS_URI: Custom = Custom {
    doc: "`https://` (the server verified against the system's root certificates) and `http://` are fetched off the request path and refreshed every 20 minutes (Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`); until the first fetch succeeds a token of that issuer is refused with 401 (a proxy waits up to the rule's `timeout` for it when it applies a configuration); `file://` (a mesh-proxy extension, warned about: Istio's validation refuses the scheme) is read at load (so `validate` checks it) and at each refresh; any other scheme is refused",
    check: jwks_uri,
};

/// A mapping's value under `key`.
fn child<'a, 'b>(n: &'a MarkedYaml<'b>, key: &str) -> Option<&'a MarkedYaml<'b>> {
    match &resolve(n).data {
        YamlData::Mapping(m) => m
            .iter()
            .find(|(k, _)| key_text(k).as_deref() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn authz_condition_key(key: &MarkedYaml<'_>) -> Option<(Verdict, String)> {
    let k = key_text(key).unwrap_or_default();
    let known = matches!(
        k.as_str(),
        "source.ip"
            | "remote.ip"
            | "source.namespace"
            | "source.principal"
            | "source.serviceAccount"
            | "source.trustDomain"
            | "destination.ip"
            | "destination.port"
            | "connection.sni"
            | "request.auth.principal"
            | "request.auth.audiences"
            | "request.auth.presenter"
    ) || (k.starts_with("request.headers[") && k.ends_with(']'))
        || (k.starts_with("request.auth.claims[") && k.ends_with(']'));
    if known {
        return None;
    }
    Some((
        Verdict::Refused(Area::Security),
        format!("condition key {k:?} is "),
    ))
}

fn jwks_uri(uri: &MarkedYaml<'_>) -> Option<(Verdict, String)> {
    let u = key_text(uri).unwrap_or_default();
    let lower = u.to_ascii_lowercase();
    if ["http://", "https://", "file://"]
        .iter()
        .any(|p| lower.starts_with(p))
        || u.is_empty()
    {
        return None;
    }
    Some((Verdict::Refused(Area::Security), format!("jwksUri {u} is ")))
}

fn authz_kind(doc: &MarkedYaml<'_>) -> Option<(Verdict, String)> {
    let dry_run = child(doc, "metadata")
        .and_then(|m| child(m, "annotations"))
        .and_then(|a| child(a, crate::validate::common::DRY_RUN_ANNOTATION))
        .and_then(key_text)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    dry_run.then(|| {
        (
            Verdict::NotYet(Area::Security),
            "AuthorizationPolicy (dry run) is ".into(),
        )
    })
}

// === the types ===

static VIRTUAL_SERVICE: TypeDef = TypeDef {
    name: "VirtualService",
    fields: &[
        field("hosts", Leaf, Status::Enforced, ""),
        field("gateways", Leaf, Status::Enforced, ""),
        field("http", Seq(&HTTP_ROUTE), Status::Enforced, ""),
        field(
            "tls",
            Seq(&TLS_ROUTE),
            Status::Enforced,
            "routed by SNI without terminating TLS on the `outboundPorts` listeners of TLS/HTTPS ports (mesh-routing `l4`)",
        ),
        field(
            "tcp",
            Seq(&TCP_ROUTE),
            Status::Enforced,
            "on the `outboundPorts` listeners (mesh-routing `l4`): one weighted destination per connection",
        ),
        field("exportTo", Leaf, Status::Enforced, ""),
    ],
};

static HTTP_ROUTE: TypeDef = TypeDef {
    name: "HttpRoute",
    fields: &[
        field("name", Leaf, Status::Enforced, ""),
        field("match", Seq(&HTTP_MATCH_REQUEST), Status::Enforced, ""),
        field("route", Seq(&HTTP_ROUTE_DESTINATION), Status::Enforced, ""),
        field("redirect", Struct(&HTTP_REDIRECT), Status::Enforced, ""),
        field(
            "directResponse",
            Struct(&HTTP_DIRECT_RESPONSE),
            Status::Enforced,
            "",
        ),
        field("delegate", Struct(&DELEGATE), Status::Enforced, ""),
        field("rewrite", Struct(&HTTP_REWRITE), Status::Enforced, ""),
        field("timeout", Leaf, Status::Enforced, ""),
        field(
            "retries",
            Struct(&HTTP_RETRY),
            Status::Enforced,
            "Istio's default policy when unset; non-idempotent requests are retried only where the upstream cannot have seen them unless `retryOn` is set; bodies replayed up to 64 KiB",
        ),
        field("fault", Struct(&HTTP_FAULT_INJECTION), Status::Enforced, ""),
        field("mirror", Struct(&DESTINATION), Status::Enforced, ""),
        field("mirrors", Seq(&HTTP_MIRROR_POLICY), Status::Enforced, ""),
        field("mirrorPercent", Leaf, Status::Enforced, ""),
        field("mirrorPercentage", Struct(&PERCENT), Status::Enforced, ""),
        field("corsPolicy", Struct(&CORS_POLICY), Status::Enforced, ""),
        field("headers", Struct(&HEADERS), Status::Enforced, ""),
    ],
};

static HTTP_MATCH_REQUEST: TypeDef = TypeDef {
    name: "HttpMatchRequest",
    fields: &[
        field("name", Leaf, Status::Enforced, ""),
        field("uri", Struct(&STRING_MATCH), Status::Enforced, ""),
        field("scheme", Struct(&STRING_MATCH), Status::Enforced, ""),
        field("method", Struct(&STRING_MATCH), Status::Enforced, ""),
        field("authority", Struct(&STRING_MATCH), Status::Enforced, ""),
        field(
            "headers",
            Map(&STRING_MATCH),
            Status::Enforced,
            "`@request.auth.claims.<a>.<b>` keys (JWT claim routing) match the claims of the token a RequestAuthentication validated, on gateway listeners; on a sidecar's outbound side no JWT is validated, so they never match there, as with Istio's sidecars",
        ),
        field("port", Leaf, Status::Enforced, ""),
        field("sourceLabels", Leaf, Status::Enforced, ""),
        field("gateways", Leaf, Status::Enforced, ""),
        field("queryParams", Map(&STRING_MATCH), Status::Enforced, ""),
        field("ignoreUriCase", Leaf, Status::Enforced, ""),
        field(
            "withoutHeaders",
            Map(&STRING_MATCH),
            Status::Enforced,
            "`@request.auth.claims.<a>.<b>` keys (JWT claim routing) match the claims of the token a RequestAuthentication validated, on gateway listeners; on a sidecar's outbound side no JWT is validated, so they never match there, as with Istio's sidecars",
        ),
        field("sourceNamespace", Leaf, Status::Enforced, ""),
        field("statPrefix", Leaf, Status::NotYet(Area::Telemetry), ""),
    ],
};

static STRING_MATCH: TypeDef = TypeDef {
    name: "StringMatch",
    fields: &[
        field("exact", Leaf, Status::Enforced, ""),
        field("prefix", Leaf, Status::Enforced, ""),
        field("regex", Leaf, Status::Enforced, ""),
    ],
};

static HTTP_ROUTE_DESTINATION: TypeDef = TypeDef {
    name: "HttpRouteDestination",
    fields: &[
        field("destination", Struct(&DESTINATION), Status::Enforced, ""),
        field("weight", Leaf, Status::Enforced, ""),
        field("headers", Struct(&HEADERS), Status::Enforced, ""),
    ],
};

static DESTINATION: TypeDef = TypeDef {
    name: "Destination",
    fields: &[
        field("host", Leaf, Status::Enforced, ""),
        field("subset", Leaf, Status::Enforced, ""),
        field("port", Struct(&PORT_SELECTOR), Status::Enforced, ""),
    ],
};

static PORT_SELECTOR: TypeDef = TypeDef {
    name: "PortSelector",
    fields: &[field("number", Leaf, Status::Enforced, "")],
};

static HEADERS: TypeDef = TypeDef {
    name: "Headers",
    fields: &[
        field("request", Struct(&HEADER_OPERATIONS), Status::Enforced, ""),
        field("response", Struct(&HEADER_OPERATIONS), Status::Enforced, ""),
    ],
};

static HEADER_OPERATIONS: TypeDef = TypeDef {
    name: "HeaderOperations",
    fields: &[
        field("set", Leaf, Status::Enforced, ""),
        field("add", Leaf, Status::Enforced, ""),
        field("remove", Leaf, Status::Enforced, ""),
    ],
};

static HTTP_REDIRECT: TypeDef = TypeDef {
    name: "HttpRedirect",
    fields: &[
        field("uri", Leaf, Status::Enforced, ""),
        field("authority", Leaf, Status::Enforced, ""),
        field("port", Leaf, Status::Enforced, ""),
        field("derivePort", Leaf, Status::Enforced, ""),
        field("scheme", Leaf, Status::Enforced, ""),
        field("redirectCode", Leaf, Status::Enforced, ""),
        field("prefixRewrite", Leaf, Status::Enforced, ""),
    ],
};

static HTTP_DIRECT_RESPONSE: TypeDef = TypeDef {
    name: "HttpDirectResponse",
    fields: &[
        field("status", Leaf, Status::Enforced, ""),
        field("body", Struct(&HTTP_BODY), Status::Enforced, ""),
    ],
};

static HTTP_BODY: TypeDef = TypeDef {
    name: "HttpBody",
    fields: &[
        field("string", Leaf, Status::Enforced, ""),
        field("bytes", Leaf, Status::Enforced, ""),
    ],
};

static DELEGATE: TypeDef = TypeDef {
    name: "Delegate",
    fields: &[
        field("name", Leaf, Status::Enforced, ""),
        field("namespace", Leaf, Status::Enforced, ""),
    ],
};

static HTTP_REWRITE: TypeDef = TypeDef {
    name: "HttpRewrite",
    fields: &[
        field("uri", Leaf, Status::Enforced, ""),
        field("authority", Leaf, Status::Enforced, ""),
        field(
            "uriRegexRewrite",
            Struct(&REGEX_REWRITE),
            Status::Enforced,
            "",
        ),
    ],
};

static REGEX_REWRITE: TypeDef = TypeDef {
    name: "RegexRewrite",
    fields: &[
        field("match", Leaf, Status::Enforced, ""),
        field("rewrite", Leaf, Status::Enforced, ""),
    ],
};

static HTTP_RETRY: TypeDef = TypeDef {
    name: "HttpRetry",
    fields: &[
        field("attempts", Leaf, Status::Enforced, ""),
        field(
            "perTryTimeout",
            Leaf,
            Status::Enforced,
            "a timed-out attempt is retried when `retryOn` has `5xx`, `gateway-error` or `reset` (Envoy); one cut before it reached the connector (waiting for the circuit breaker's pending queue) ends with its `504 UT`",
        ),
        field(
            "retryOn",
            Leaf,
            Status::Enforced,
            "gRPC statuses are read from the head and, beyond Envoy, from trailers that come before any message (the head waits for the first frame when `retryOn` names a gRPC status); `retriable-headers` has no effect (warned: Istio configures no retriable headers)",
        ),
        field(
            "retryRemoteLocalities",
            Leaf,
            Status::Enforced,
            "Envoy's `previous_priorities` with Istio's `update_frequency: 2`",
        ),
        field("retryIgnorePreviousHosts", Leaf, Status::Enforced, ""),
        field("backoff", Leaf, Status::Enforced, ""),
    ],
};

static HTTP_FAULT_INJECTION: TypeDef = TypeDef {
    name: "HttpFaultInjection",
    fields: &[
        field("delay", Struct(&FAULT_DELAY), Status::Enforced, ""),
        field("abort", Struct(&FAULT_ABORT), Status::Enforced, ""),
    ],
};

static FAULT_DELAY: TypeDef = TypeDef {
    name: "FaultDelay",
    fields: &[
        field("percent", Leaf, Status::Enforced, ""),
        field("fixedDelay", Leaf, Status::Enforced, ""),
        field(
            "exponentialDelay",
            Leaf,
            Status::NotYet(Area::Resilience),
            "",
        ),
        field("percentage", Struct(&PERCENT), Status::Enforced, ""),
    ],
};

static PERCENT: TypeDef = TypeDef {
    name: "Percent",
    fields: &[field("value", Leaf, Status::Enforced, "")],
};

static FAULT_ABORT: TypeDef = TypeDef {
    name: "FaultAbort",
    fields: &[
        field("httpStatus", Leaf, Status::Enforced, ""),
        field("grpcStatus", Leaf, Status::Enforced, ""),
        field("http2Error", Leaf, Status::NotYet(Area::Resilience), ""),
        field("percentage", Struct(&PERCENT), Status::Enforced, ""),
    ],
};

static HTTP_MIRROR_POLICY: TypeDef = TypeDef {
    name: "HttpMirrorPolicy",
    fields: &[
        field("destination", Struct(&DESTINATION), Status::Enforced, ""),
        field("percentage", Struct(&PERCENT), Status::Enforced, ""),
    ],
};

static CORS_POLICY: TypeDef = TypeDef {
    name: "CorsPolicy",
    fields: &[
        field("allowOrigin", Leaf, Status::Enforced, ""),
        field("allowOrigins", Seq(&STRING_MATCH), Status::Enforced, ""),
        field("allowMethods", Leaf, Status::Enforced, ""),
        field("allowHeaders", Leaf, Status::Enforced, ""),
        field("exposeHeaders", Leaf, Status::Enforced, ""),
        field("maxAge", Leaf, Status::Enforced, ""),
        field("allowCredentials", Leaf, Status::Enforced, ""),
        field("unmatchedPreflights", Leaf, Status::Enforced, ""),
    ],
};

static TLS_ROUTE: TypeDef = TypeDef {
    name: "TlsRoute",
    fields: &[
        field("match", Seq(&TLS_MATCH_ATTRIBUTES), Status::Enforced, ""),
        field("route", Seq(&ROUTE_DESTINATION), Status::Enforced, ""),
    ],
};

static TLS_MATCH_ATTRIBUTES: TypeDef = TypeDef {
    name: "TlsMatchAttributes",
    fields: &[
        field("sniHosts", Leaf, Status::Enforced, ""),
        field("destinationSubnets", Leaf, Status::Enforced, ""),
        field("port", Leaf, Status::Enforced, ""),
        field("sourceLabels", Leaf, Status::Enforced, ""),
        field("gateways", Leaf, Status::Enforced, ""),
        field("sourceNamespace", Leaf, Status::Enforced, ""),
    ],
};

static ROUTE_DESTINATION: TypeDef = TypeDef {
    name: "RouteDestination",
    fields: &[
        field("destination", Struct(&DESTINATION), Status::Enforced, ""),
        field("weight", Leaf, Status::Enforced, ""),
    ],
};

static TCP_ROUTE: TypeDef = TypeDef {
    name: "TcpRoute",
    fields: &[
        field("match", Seq(&L4_MATCH_ATTRIBUTES), Status::Enforced, ""),
        field("route", Seq(&ROUTE_DESTINATION), Status::Enforced, ""),
    ],
};

static L4_MATCH_ATTRIBUTES: TypeDef = TypeDef {
    name: "L4MatchAttributes",
    fields: &[
        field("destinationSubnets", Leaf, Status::Enforced, ""),
        field("port", Leaf, Status::Enforced, ""),
        field(
            "sourceSubnet",
            Leaf,
            Status::Enforced,
            "matched against the client's address, as documented (Istio's sidecars do not program this hidden field)",
        ),
        field("sourceLabels", Leaf, Status::Enforced, ""),
        field("gateways", Leaf, Status::Enforced, ""),
        field("sourceNamespace", Leaf, Status::Enforced, ""),
    ],
};

static DESTINATION_RULE: TypeDef = TypeDef {
    name: "DestinationRule",
    fields: &[
        field("host", Leaf, Status::Enforced, ""),
        field(
            "trafficPolicy",
            Struct(&TRAFFIC_POLICY),
            Status::Enforced,
            "",
        ),
        field("subsets", Seq(&SUBSET), Status::Enforced, ""),
        field("exportTo", Leaf, Status::Enforced, ""),
        field(
            "workloadSelector",
            Struct(&WORKLOAD_SELECTOR),
            Status::Enforced,
            "",
        ),
    ],
};

static TRAFFIC_POLICY: TypeDef = TypeDef {
    name: "TrafficPolicy",
    fields: &[
        field(
            "loadBalancer",
            Struct(&LOAD_BALANCER_SETTINGS),
            Status::Enforced,
            "",
        ),
        field(
            "connectionPool",
            Struct(&CONNECTION_POOL_SETTINGS),
            Status::Enforced,
            "the clients' cluster of the host; and, as Istio applies it to the receiver too, the inbound cluster of the workloads the host's service selects, unless their Sidecar sets a pool (a rule without `workloadSelector`)",
        ),
        field(
            "outlierDetection",
            Struct(&OUTLIER_DETECTION),
            Status::Enforced,
            "",
        ),
        field("tls", Struct(&CLIENT_TLS_SETTINGS), Status::Enforced, ""),
        field(
            "portLevelSettings",
            Seq(&PORT_TRAFFIC_POLICY),
            Status::Enforced,
            "",
        ),
        field(
            "tunnel",
            Struct(&TUNNEL_SETTINGS),
            Status::NotYet(Area::GatewaysL4),
            "",
        ),
        field(
            "proxyProtocol",
            Struct(&PROXY_PROTOCOL),
            Status::NotYet(Area::GatewaysL4),
            "",
        ),
        field("retryBudget", Struct(&RETRY_BUDGET), Status::Enforced, ""),
    ],
};

static LOAD_BALANCER_SETTINGS: TypeDef = TypeDef {
    name: "LoadBalancerSettings",
    fields: &[
        field("simple", Leaf, Status::Enforced, ""),
        field(
            "consistentHash",
            Struct(&CONSISTENT_HASH_LB),
            Status::Enforced,
            "",
        ),
        field(
            "localityLbSetting",
            Struct(&LOCALITY_LB_SETTING),
            Status::Enforced,
            "",
        ),
        field(
            "zoneAwareLbSetting",
            Struct(&ZONE_AWARE_LB_SETTING),
            Status::NotYet(Area::Later),
            "",
        ),
        field("warmupDurationSecs", Leaf, Status::Enforced, ""),
        field(
            "warmup",
            Struct(&WARMUP_CONFIGURATION),
            Status::Enforced,
            "",
        ),
    ],
};

static CONSISTENT_HASH_LB: TypeDef = TypeDef {
    name: "ConsistentHashLb",
    fields: &[
        field("httpHeaderName", Leaf, Status::Enforced, ""),
        field("httpCookie", Struct(&HTTP_COOKIE), Status::Enforced, ""),
        field("useSourceIp", Leaf, Status::Enforced, ""),
        field("httpQueryParameterName", Leaf, Status::Enforced, ""),
        field("ringHash", Struct(&RING_HASH), Status::Enforced, ""),
        field("maglev", Struct(&MAG_LEV), Status::Enforced, ""),
        field("minimumRingSize", Leaf, Status::Enforced, ""),
    ],
};

static HTTP_COOKIE: TypeDef = TypeDef {
    name: "HttpCookie",
    fields: &[
        field("name", Leaf, Status::Enforced, ""),
        field("path", Leaf, Status::Enforced, ""),
        field("ttl", Leaf, Status::Enforced, ""),
        field("attributes", Seq(&COOKIE_ATTRIBUTE), Status::Enforced, ""),
    ],
};

static COOKIE_ATTRIBUTE: TypeDef = TypeDef {
    name: "CookieAttribute",
    fields: &[
        field("name", Leaf, Status::Enforced, ""),
        field("value", Leaf, Status::Enforced, ""),
    ],
};

static RING_HASH: TypeDef = TypeDef {
    name: "RingHash",
    fields: &[field("minimumRingSize", Leaf, Status::Enforced, "")],
};

static MAG_LEV: TypeDef = TypeDef {
    name: "MagLev",
    fields: &[field("tableSize", Leaf, Status::Enforced, "")],
};

static LOCALITY_LB_SETTING: TypeDef = TypeDef {
    name: "LocalityLbSetting",
    fields: &[
        field(
            "distribute",
            Seq(&LOCALITY_DISTRIBUTE),
            Status::Enforced,
            "",
        ),
        field("failover", Seq(&LOCALITY_FAILOVER), Status::Enforced, ""),
        field("failoverPriority", Leaf, Status::Enforced, ""),
        field("enabled", Leaf, Status::Enforced, ""),
    ],
};

static LOCALITY_DISTRIBUTE: TypeDef = TypeDef {
    name: "LocalityDistribute",
    fields: &[
        field("from", Leaf, Status::Enforced, ""),
        field("to", Leaf, Status::Enforced, ""),
    ],
};

static LOCALITY_FAILOVER: TypeDef = TypeDef {
    name: "LocalityFailover",
    fields: &[
        field("from", Leaf, Status::Enforced, ""),
        field("to", Leaf, Status::Enforced, ""),
    ],
};

static ZONE_AWARE_LB_SETTING: TypeDef = TypeDef {
    name: "ZoneAwareLbSetting",
    fields: &[
        field("enabled", Leaf, Status::NotYet(Area::Later), ""),
        field(
            "failover",
            Seq(&LOCALITY_FAILOVER),
            Status::NotYet(Area::Later),
            "",
        ),
        field("failoverPriority", Leaf, Status::NotYet(Area::Later), ""),
        field("minClusterSize", Leaf, Status::NotYet(Area::Later), ""),
    ],
};

static WARMUP_CONFIGURATION: TypeDef = TypeDef {
    name: "WarmupConfiguration",
    fields: &[
        field("duration", Leaf, Status::Enforced, ""),
        field("minimumPercent", Leaf, Status::Enforced, ""),
        field("aggression", Leaf, Status::Enforced, ""),
    ],
};

static CONNECTION_POOL_SETTINGS: TypeDef = TypeDef {
    name: "ConnectionPoolSettings",
    fields: &[
        field("tcp", Struct(&TCP_SETTINGS), Status::Enforced, ""),
        field("http", Struct(&HTTP_SETTINGS), Status::Enforced, ""),
    ],
};

static TCP_SETTINGS: TypeDef = TypeDef {
    name: "TcpSettings",
    fields: &[
        field(
            "maxConnections",
            Leaf,
            Status::Enforced,
            "HTTP/1.1 connections in use at once, HTTP/2 connections open (a worker's first to an endpoint whatever the limit, as Envoy), and the TCP proxy's connections (`outboundPorts`; over it a connection is closed, flag UO)",
        ),
        field(
            "connectTimeout",
            Leaf,
            Status::Enforced,
            "replaces the bootstrap's limits.connectTimeout for the cluster",
        ),
        field(
            "tcpKeepalive",
            Struct(&TCP_KEEPALIVE),
            Status::Enforced,
            "on HTTP and TCP proxy upstream connections",
        ),
        field(
            "maxConnectionDuration",
            Leaf,
            Status::Enforced,
            "HTTP upstream connections, checked every 2 s: in-flight requests finish",
        ),
        field(
            "idleTimeout",
            Leaf,
            Status::Enforced,
            "for HTTP upstream connections when http.idleTimeout is unset, as Istio; the TCP proxy's idle timeout (`outboundPorts`; default 1h)",
        ),
    ],
};

static TCP_KEEPALIVE: TypeDef = TypeDef {
    name: "TcpKeepalive",
    fields: &[
        field("probes", Leaf, Status::Enforced, ""),
        field("time", Leaf, Status::Enforced, "whole seconds, as Istio"),
        field(
            "interval",
            Leaf,
            Status::Enforced,
            "whole seconds, as Istio",
        ),
    ],
};

static HTTP_SETTINGS: TypeDef = TypeDef {
    name: "HttpSettings",
    fields: &[
        field(
            "http1MaxPendingRequests",
            Leaf,
            Status::Enforced,
            "requests waiting for an HTTP/1.1 connection, or for an HTTP/2 stream when every connection is full and maxConnections allows no other",
        ),
        field("http2MaxRequests", Leaf, Status::Enforced, ""),
        field(
            "maxRequestsPerConnection",
            Leaf,
            Status::Enforced,
            "HTTP/1.1 and HTTP/2 upstream connections",
        ),
        field(
            "maxRetries",
            Leaf,
            Status::Enforced,
            "a default retry budget (20 %, at least 3) applies beside it: safe by default",
        ),
        field(
            "idleTimeout",
            Leaf,
            Status::Enforced,
            "checked every 2 s; HTTP/2: since the last request began on the connection",
        ),
        field("h2UpgradePolicy", Leaf, Status::Enforced, ""),
        field(
            "useClientProtocol",
            Leaf,
            Status::Enforced,
            "HTTP/2 upstream for HTTP/2 requests, HTTP/1.1 for the others (Envoy's `use_downstream_protocol_config`)",
        ),
        field(
            "maxConcurrentStreams",
            Leaf,
            Status::Enforced,
            "streams per upstream HTTP/2 connection, at most the server's `SETTINGS_MAX_CONCURRENT_STREAMS`; more connections are opened, up to `maxConnections`, then requests wait as pending",
        ),
        field(
            "http2KeepAlive",
            Struct(&CONNECTION_KEEPALIVE),
            Status::Enforced,
            "HTTP/2 upstream connections; PINGs while streams are open",
        ),
    ],
};

static CONNECTION_KEEPALIVE: TypeDef = TypeDef {
    name: "ConnectionKeepalive",
    fields: &[
        field("interval", Leaf, Status::Enforced, ""),
        field(
            "timeout",
            Leaf,
            Status::Enforced,
            "unset: 20 s (the HTTP/2 client's default)",
        ),
    ],
};

/// `ConnectionPoolSettings` where it applies to an inbound cluster (the Sidecar's
/// `inboundConnectionPool` and `ingress[].connectionPool`): the application is the upstream.
/// (The names are the model's; the table of one kind never holds both variants.)
static INBOUND_CONNECTION_POOL_SETTINGS: TypeDef = TypeDef {
    name: "ConnectionPoolSettings",
    fields: &[
        field("tcp", Struct(&INBOUND_TCP_SETTINGS), Status::Enforced, ""),
        field("http", Struct(&INBOUND_HTTP_SETTINGS), Status::Enforced, ""),
    ],
};

static INBOUND_TCP_SETTINGS: TypeDef = TypeDef {
    name: "TcpSettings",
    fields: &[
        field(
            "maxConnections",
            Leaf,
            Status::Enforced,
            "HTTP/1.1 connections to the application in use at once and HTTP/2 connections open; on a TCP ingress port the proxied connections (over it a connection is closed, flag UO)",
        ),
        field(
            "connectTimeout",
            Leaf,
            Status::Enforced,
            "replaces the bootstrap's limits.connectTimeout for the connections to the application",
        ),
        field(
            "tcpKeepalive",
            Struct(&TCP_KEEPALIVE),
            Status::Enforced,
            "on the connections to the application",
        ),
        field(
            "maxConnectionDuration",
            Leaf,
            Status::Enforced,
            "HTTP connections to the application, checked every 2 s: in-flight requests finish",
        ),
        field(
            "idleTimeout",
            Leaf,
            Status::Enforced,
            "HTTP connections to the application when http.idleTimeout is unset, as Istio; a TCP ingress port's connections keep Istio's inbound default (1h: Istio takes it from the proxy's IDLE_TIMEOUT, not the pool)",
        ),
    ],
};

static INBOUND_HTTP_SETTINGS: TypeDef = TypeDef {
    name: "HttpSettings",
    fields: &[
        field(
            "http1MaxPendingRequests",
            Leaf,
            Status::Enforced,
            "requests waiting for a connection to the application (or an HTTP/2 stream)",
        ),
        field(
            "http2MaxRequests",
            Leaf,
            Status::Enforced,
            "requests in flight to the application",
        ),
        field(
            "maxRequestsPerConnection",
            Leaf,
            Status::Enforced,
            "connections to the application",
        ),
        field(
            "maxRetries",
            Leaf,
            Status::Enforced,
            "no effect: inbound routes do not retry (as Istio's)",
        ),
        field(
            "idleTimeout",
            Leaf,
            Status::Enforced,
            "connections to the application, checked every 2 s",
        ),
        field(
            "h2UpgradePolicy",
            Leaf,
            Status::Enforced,
            "no effect: Istio upgrades outbound clusters only (`applyH2Upgrade`); the application is spoken to in its port's protocol",
        ),
        field(
            "useClientProtocol",
            Leaf,
            Status::Enforced,
            "no effect: outbound only in Istio; a port that declares no protocol is spoken to in the client's",
        ),
        field(
            "maxConcurrentStreams",
            Leaf,
            Status::Enforced,
            "streams per HTTP/2 connection to the application",
        ),
        field(
            "http2KeepAlive",
            Struct(&CONNECTION_KEEPALIVE),
            Status::Enforced,
            "HTTP/2 connections to the application",
        ),
    ],
};

static OUTLIER_DETECTION: TypeDef = TypeDef {
    name: "OutlierDetection",
    fields: &[
        field(
            "consecutiveErrors",
            Leaf,
            Status::Enforced,
            "deprecated: ignored, as istiod ignores it (validation warns)",
        ),
        field("splitExternalLocalOriginErrors", Leaf, Status::Enforced, ""),
        field("consecutiveLocalOriginFailures", Leaf, Status::Enforced, ""),
        field("consecutiveGatewayErrors", Leaf, Status::Enforced, ""),
        field("consecutive5xxErrors", Leaf, Status::Enforced, ""),
        field("interval", Leaf, Status::Enforced, ""),
        field("baseEjectionTime", Leaf, Status::Enforced, ""),
        field("maxEjectionPercent", Leaf, Status::Enforced, ""),
        field(
            "minHealthPercent",
            Leaf,
            Status::Enforced,
            "the balancer's panic threshold",
        ),
        field("outlierDetectionHttpErrorCodes", Leaf, Status::Enforced, ""),
    ],
};

static CLIENT_TLS_SETTINGS: TypeDef = TypeDef {
    name: "ClientTlsSettings",
    fields: &[
        field(
            "mode",
            Leaf,
            Status::Values(&TLS_MODE),
            "`DISABLE`; `ISTIO_MUTUAL` (needs ProxyBootstrap spec.identity); `SIMPLE` and `MUTUAL`: TLS origination by the sidecar (Istio's egress TLS origination), files read at load",
        ),
        field(
            "clientCertificate",
            Leaf,
            Status::Enforced,
            "`MUTUAL`: read at load; a key that does not match it is an error",
        ),
        field("privateKey", Leaf, Status::Enforced, ""),
        field(
            "caCertificates",
            Leaf,
            Status::Enforced,
            "unset: the system's trust roots (Istio's `system`)",
        ),
        field(
            "credentialName",
            Leaf,
            Status::Enforced,
            "at a gateway (a workload a Gateway selects), read from `ProxyBootstrap.credentialsDir`/<workload namespace>/<name>/ (`ca.crt`, else `<name>-cacert/ca.crt`; `tls.crt` and `tls.key` for MUTUAL), as Istio reads the secret at gateways only; on a sidecar, or without credentialsDir, refused (security fails closed)",
        ),
        field(
            "subjectAltNames",
            Leaf,
            Status::Enforced,
            "the server certificate carries one of them; for `ISTIO_MUTUAL` SPIFFE identities replacing the service account",
        ),
        field(
            "sni",
            Leaf,
            Status::Enforced,
            "unset: the request's host (Envoy's `auto_sni`, checked as `auto_san_validation`); `ISTIO_MUTUAL`: the cluster name",
        ),
        field(
            "insecureSkipVerify",
            Leaf,
            Status::Enforced,
            "the server is not verified; a warning at load",
        ),
        field(
            "caCrl",
            Leaf,
            Status::Refused(Area::Security),
            "revocation lists are not checked yet: refused rather than ignored",
        ),
    ],
};

static PORT_TRAFFIC_POLICY: TypeDef = TypeDef {
    name: "PortTrafficPolicy",
    fields: &[
        field("port", Struct(&PORT_SELECTOR), Status::Enforced, ""),
        field(
            "loadBalancer",
            Struct(&LOAD_BALANCER_SETTINGS),
            Status::Enforced,
            "",
        ),
        field(
            "connectionPool",
            Struct(&CONNECTION_POOL_SETTINGS),
            Status::Enforced,
            "",
        ),
        field(
            "outlierDetection",
            Struct(&OUTLIER_DETECTION),
            Status::Enforced,
            "",
        ),
        field("tls", Struct(&CLIENT_TLS_SETTINGS), Status::Enforced, ""),
    ],
};

static TUNNEL_SETTINGS: TypeDef = TypeDef {
    name: "TunnelSettings",
    fields: &[
        field("protocol", Leaf, Status::NotYet(Area::GatewaysL4), ""),
        field("targetHost", Leaf, Status::NotYet(Area::GatewaysL4), ""),
        field("targetPort", Leaf, Status::NotYet(Area::GatewaysL4), ""),
    ],
};

static PROXY_PROTOCOL: TypeDef = TypeDef {
    name: "ProxyProtocol",
    fields: &[field("version", Leaf, Status::NotYet(Area::GatewaysL4), "")],
};

static RETRY_BUDGET: TypeDef = TypeDef {
    name: "RetryBudget",
    fields: &[
        field("percent", Leaf, Status::Enforced, ""),
        field("minRetryConcurrency", Leaf, Status::Enforced, ""),
        field(
            "budgetInterval",
            Leaf,
            Status::Enforced,
            "the budget is a share of the requests begun within the interval (a sliding window in tenths of it); unset or 0: of the requests active and pending",
        ),
    ],
};

static SUBSET: TypeDef = TypeDef {
    name: "Subset",
    fields: &[
        field("name", Leaf, Status::Enforced, ""),
        field("labels", Leaf, Status::Enforced, ""),
        field(
            "trafficPolicy",
            Struct(&TRAFFIC_POLICY),
            Status::Enforced,
            "",
        ),
    ],
};

static WORKLOAD_SELECTOR: TypeDef = TypeDef {
    name: "WorkloadSelector",
    fields: &[field("matchLabels", Leaf, Status::Enforced, "")],
};

static SERVICE_ENTRY: TypeDef = TypeDef {
    name: "ServiceEntry",
    fields: &[
        field("hosts", Leaf, Status::Enforced, ""),
        field("addresses", Leaf, Status::Enforced, ""),
        field(
            "ports",
            Seq(&SERVICE_PORT),
            Status::Enforced,
            "HTTP-family ports are routed by Host on the outbound listener; TCP, TLS, HTTPS, MONGO, MYSQL, REDIS and other L4 ports are proxied (TCP/TLS routes) by the ProxyBootstrap `outboundPorts` listener that captures them",
        ),
        field("location", Leaf, Status::Enforced, ""),
        field("resolution", Leaf, Status::Values(&RESOLUTION), ""),
        field("endpoints", Seq(&WORKLOAD_ENTRY), Status::Enforced, ""),
        field(
            "workloadSelector",
            Struct(&LABEL_SELECTOR),
            Status::Enforced,
            "",
        ),
        field("exportTo", Leaf, Status::Enforced, ""),
        field(
            "subjectAltNames",
            Leaf,
            Status::Enforced,
            "the identities expected of the endpoints with Istio mTLS (with their service accounts) and of the server with `SIMPLE`/`MUTUAL` when the DestinationRule names none",
        ),
    ],
};

static SERVICE_PORT: TypeDef = TypeDef {
    name: "ServicePort",
    fields: &[
        field("number", Leaf, Status::Enforced, ""),
        field("protocol", Leaf, Status::Enforced, ""),
        field("name", Leaf, Status::Enforced, ""),
        field("targetPort", Leaf, Status::Enforced, ""),
    ],
};

static WORKLOAD_ENTRY: TypeDef = TypeDef {
    name: "WorkloadEntry",
    fields: &[
        field("address", Leaf, Status::Enforced, ""),
        field("ports", Leaf, Status::Enforced, ""),
        field("labels", Leaf, Status::Enforced, ""),
        field(
            "network",
            Leaf,
            Status::NotYet(Area::Later),
            "endpoints are reached directly, never through a network gateway; failoverPriority reads the value",
        ),
        field("locality", Leaf, Status::Enforced, ""),
        field("weight", Leaf, Status::Enforced, ""),
        field(
            "serviceAccount",
            Leaf,
            Status::Enforced,
            "the identity expected of the endpoint under auto mTLS and `ISTIO_MUTUAL` (`spiffe://<mesh.trustDomain>/ns/<ns>/sa/<serviceAccount>`), checked in the handshake",
        ),
    ],
};

static LABEL_SELECTOR: TypeDef = TypeDef {
    name: "LabelSelector",
    fields: &[field("labels", Leaf, Status::Enforced, "")],
};

static GATEWAY: TypeDef = TypeDef {
    name: "Gateway",
    fields: &[
        field(
            "servers",
            Seq(&SERVER),
            Status::Enforced,
            "on the workload a Gateway selects: one listener per server port (`gatewayPorts` maps it to a local port), servers on one port share it",
        ),
        field(
            "selector",
            Leaf,
            Status::Enforced,
            "Gateways of any namespace select by the bootstrap workload's labels (Istio's default, PILOT_SCOPE_GATEWAY_TO_NAMESPACE off)",
        ),
    ],
};

/// Gateway `servers[].port.protocol`: HTTP, HTTPS and the L4 protocols Envoy's TCP proxy
/// carries are served; UDP and unknown protocols are not.
static GATEWAY_PROTOCOL: Custom = Custom {
    doc: "HTTP, HTTP2, GRPC, GRPC-WEB (plaintext) and HTTPS (terminated: tls.mode SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL) servers are served; TCP, MONGO, MYSQL and REDIS servers are L4 listeners (tcp routes); TLS and HTTPS servers in PASSTHROUGH mode are L4 listeners routed by SNI (tls routes), in AUTO_PASSTHROUGH mode by the SNI's cluster name (outbound_.<port>_.<subset>_.<host>); TLS servers in SIMPLE, MUTUAL, OPTIONAL_MUTUAL or ISTIO_MUTUAL mode terminate TLS and route the plaintext with tcp routes; UDP is not yet (gateways and L4)",
    check: gateway_protocol,
};

fn gateway_protocol(p: &MarkedYaml<'_>) -> Option<(Verdict, String)> {
    use crate::validate::common::Protocol;
    let text = key_text(p).unwrap_or_default();
    let proto = Protocol::parse(&text);
    if proto.is_http()
        || matches!(
            proto,
            Protocol::Https
                | Protocol::Tls
                | Protocol::Tcp
                | Protocol::Mongo
                | Protocol::MySql
                | Protocol::Redis
        )
    {
        return None;
    }
    Some((
        Verdict::NotYet(Area::GatewaysL4),
        format!("gateway server protocol {text} is "),
    ))
}

/// Gateway `servers[].tls.mode`: terminated modes are served, PASSTHROUGH (an L4 listener
/// routed by SNI) and AUTO_PASSTHROUGH (routed by the SNI's cluster name).
static SERVER_TLS_MODE: Values = Values {
    cases: &[
        ("SIMPLE", Verdict::Enforced),
        ("MUTUAL", Verdict::Enforced),
        ("OPTIONAL_MUTUAL", Verdict::Enforced),
        ("ISTIO_MUTUAL", Verdict::Enforced),
        ("PASSTHROUGH", Verdict::Enforced),
        ("AUTO_PASSTHROUGH", Verdict::Enforced),
    ],
    otherwise: Verdict::Refused(Area::Security),
};

static SERVER: TypeDef = TypeDef {
    name: "Server",
    fields: &[
        field("port", Struct(&PORT), Status::Enforced, ""),
        field(
            "bind",
            Leaf,
            Status::Enforced,
            "an IP address the listener binds (a `unix://` socket is refused by the pipeline)",
        ),
        field(
            "hosts",
            Leaf,
            Status::Enforced,
            "the hosts VirtualServices bound to the gateway are served for (`ns/`, `*/`, `./` decide which namespaces may bind); other hosts get 404 NR; for TLS, the SNI names",
        ),
        field("tls", Struct(&SERVER_TLS_SETTINGS), Status::Enforced, ""),
        field(
            "defaultEndpoint",
            Leaf,
            Status::NotYet(Area::Later),
            "Sidecar ingress only",
        ),
        field(
            "name",
            Leaf,
            Status::Enforced,
            "a label: nothing to enforce",
        ),
    ],
};

static PORT: TypeDef = TypeDef {
    name: "Port",
    fields: &[
        field("number", Leaf, Status::Enforced, ""),
        field("protocol", Leaf, Status::Custom(&GATEWAY_PROTOCOL), ""),
        field(
            "name",
            Leaf,
            Status::Enforced,
            "a label: nothing to enforce",
        ),
        field(
            "targetPort",
            Leaf,
            Status::NotYet(Area::Later),
            "deprecated in Istio",
        ),
    ],
};

static SERVER_TLS_SETTINGS: TypeDef = TypeDef {
    name: "ServerTlsSettings",
    fields: &[
        field(
            "httpsRedirect",
            Leaf,
            Status::Enforced,
            "301 to `https://` + Host + path for the server's hosts (Envoy's `require_tls`)",
        ),
        field("mode", Leaf, Status::Values(&SERVER_TLS_MODE), ""),
        field(
            "serverCertificate",
            Leaf,
            Status::Enforced,
            "re-read when the file changes",
        ),
        field(
            "privateKey",
            Leaf,
            Status::Enforced,
            "re-read when the file changes",
        ),
        field(
            "caCertificates",
            Leaf,
            Status::Enforced,
            "`MUTUAL`: client certificates must chain to them",
        ),
        field(
            "caCrl",
            Leaf,
            Status::Refused(Area::Security),
            "revocation lists are not checked",
        ),
        field(
            "credentialName",
            Leaf,
            Status::Enforced,
            "read from files: `ProxyBootstrap.credentialsDir`/<gateway namespace>/<name>/{tls.crt,tls.key,ca.crt} (Istio's secret keys; the CA also from `<name>-cacert`); refused without credentialsDir",
        ),
        field(
            "credentialNames",
            Leaf,
            Status::Refused(Area::Security),
            "several certificates per server are not served yet",
        ),
        field(
            "caCertCredentialName",
            Leaf,
            Status::Enforced,
            "the CA from `credentialsDir`/<namespace>/<name>/ca.crt",
        ),
        field(
            "tlsCertificates",
            Seq(&TLS_CERTIFICATE),
            Status::Refused(Area::Security),
            "several certificates per server are not served yet",
        ),
        field(
            "subjectAltNames",
            Leaf,
            Status::Enforced,
            "`MUTUAL`: the client certificate carries one of them (checked in the handshake)",
        ),
        field(
            "verifyCertificateSpki",
            Leaf,
            Status::Refused(Area::Security),
            "",
        ),
        field(
            "verifyCertificateHash",
            Leaf,
            Status::Refused(Area::Security),
            "",
        ),
        field(
            "minProtocolVersion",
            Leaf,
            Status::Enforced,
            "TLS 1.2 and 1.3 are offered; a minimum of 1.0 or 1.1 serves from 1.2",
        ),
        field(
            "maxProtocolVersion",
            Leaf,
            Status::Enforced,
            "a maximum below TLS 1.2 is refused",
        ),
        field(
            "cipherSuites",
            Leaf,
            Status::Enforced,
            "TLS 1.2 suites: the ECDHE AES-GCM and CHACHA20-POLY1305 ones; any other is refused",
        ),
        field(
            "insecureSkipVerify",
            Leaf,
            Status::Refused(Area::Security),
            "",
        ),
    ],
};

static TLS_CERTIFICATE: TypeDef = TypeDef {
    name: "TlsCertificate",
    fields: &[
        field(
            "serverCertificate",
            Leaf,
            Status::NotYet(Area::GatewaysL4),
            "",
        ),
        field("privateKey", Leaf, Status::NotYet(Area::GatewaysL4), ""),
        field("caCertificates", Leaf, Status::NotYet(Area::GatewaysL4), ""),
    ],
};

static SIDECAR: TypeDef = TypeDef {
    name: "Sidecar",
    fields: &[
        field(
            "workloadSelector",
            Struct(&LABEL_SELECTOR),
            Status::Enforced,
            "",
        ),
        field(
            "ingress",
            Seq(&ISTIO_INGRESS_LISTENER),
            Status::Enforced,
            "one inbound listener per entry of the Sidecar that selects the workload, on the bootstrap's `inbound.address` (needs `inbound`: without it a warning, no listener), forwarding to `defaultEndpoint`; an `inboundPorts` entry for the same port is served by it; a reload that changes these listeners is refused (restart)",
        ),
        field("egress", Seq(&ISTIO_EGRESS_LISTENER), Status::Enforced, ""),
        field(
            "inboundConnectionPool",
            Struct(&INBOUND_CONNECTION_POOL_SETTINGS),
            Status::Enforced,
            "the pool of every inbound cluster (the inbound, `inboundPorts` and Sidecar ingress listeners' endpoints) the ingress entry of its port leaves unset; it replaces the DestinationRule's pool there, as Istio's `InboundConnectionPoolForPort`. Not applied by mesh-stack's in-process server (a warning): there is no connection to the application",
        ),
        field(
            "outboundTrafficPolicy",
            Struct(&OUTBOUND_TRAFFIC_POLICY),
            Status::Enforced,
            "",
        ),
    ],
};

static ISTIO_INGRESS_LISTENER: TypeDef = TypeDef {
    name: "IstioIngressListener",
    fields: &[
        field(
            "port",
            Struct(&SIDECAR_PORT),
            Status::Enforced,
            "the listener's port: its local port is `inboundPorts[number]`, else `number`; a local port another listener has is an error",
        ),
        field(
            "bind",
            Leaf,
            Status::Enforced,
            "the address listened on instead of `inbound.address`",
        ),
        field(
            "captureMode",
            Leaf,
            Status::NotYet(Area::GatewaysL4),
            "no iptables capture in this version: every ingress listener is bound on its address, whatever the mode",
        ),
        field(
            "defaultEndpoint",
            Leaf,
            Status::Enforced,
            "`127.0.0.1:PORT`, `[::1]:PORT` as written; `0.0.0.0:PORT`, `[::]:PORT` and unset (`port.number`) at `inbound.localApp`'s host, as Istio forwards to the instance IP; `unix://` is refused (TCP endpoints only)",
        ),
        field(
            "tls",
            Struct(&SERVER_TLS_SETTINGS),
            Status::Enforced,
            "Sidecar ingress TLS (`SIMPLE`, `MUTUAL`, `OPTIONAL_MUTUAL`): terminated with the listener's `serverCertificate` and `privateKey` (clients checked against `caCertificates`; the files re-read when they change) instead of the workload's mTLS; an `HTTPS` port is then served as HTTP, a `TLS` port as TCP; `PASSTHROUGH` leaves the TLS to the endpoint",
        ),
        field(
            "connectionPool",
            Struct(&INBOUND_CONNECTION_POOL_SETTINGS),
            Status::Enforced,
            "the pool of the port's inbound cluster (`inbound|<port>||`), replacing `inboundConnectionPool` and the DestinationRule's: the circuit breaker (503 `UO`) and the connections to the endpoint; a TCP port applies `tcp.maxConnections` (flag `UO`), `connectTimeout` and `tcpKeepalive`",
        ),
    ],
};

static SIDECAR_PORT: TypeDef = TypeDef {
    name: "SidecarPort",
    fields: &[
        field(
            "number",
            Leaf,
            Status::Enforced,
            "the workload port: PeerAuthentication's `portLevelMtls` key, the destination port AuthorizationPolicies see",
        ),
        field(
            "protocol",
            Leaf,
            Status::Enforced,
            "`HTTP`, `HTTP2`, `GRPC`, `GRPC-Web`, `HTTP_PROXY`: the inbound HTTP stack (mTLS, JWT, AuthorizationPolicy, rate limit, telemetry); `UDP`: no listener (a warning); any other, or unset: opaque TCP (the port's mTLS, AuthorizationPolicies with Istio's TCP semantics, spliced to the endpoint)",
        ),
        field("name", Leaf, Status::Enforced, "a label only"),
        field("targetPort", Leaf, Status::NotYet(Area::GatewaysL4), ""),
    ],
};

static EGRESS_SIDECAR_PORT: TypeDef = TypeDef {
    name: "SidecarPort",
    fields: &[
        field(
            "number",
            Leaf,
            Status::Enforced,
            "the port the listener's hosts are imported on",
        ),
        field(
            "protocol",
            Leaf,
            Status::NotYet(Area::GatewaysL4),
            "the services' own port protocols decide how a port is served",
        ),
        field(
            "name",
            Leaf,
            Status::Enforced,
            "a label only: Istio does not use it to select",
        ),
        field("targetPort", Leaf, Status::NotYet(Area::GatewaysL4), ""),
    ],
};

static ISTIO_EGRESS_LISTENER: TypeDef = TypeDef {
    name: "IstioEgressListener",
    fields: &[
        field(
            "port",
            Struct(&EGRESS_SIDECAR_PORT),
            Status::Enforced,
            "the listener's hosts are imported on that port only (a service without it is not imported), and that port serves that listener's hosts only, not the catch-all listener's, as Istio's per-port outbound listeners; another port of such a service is outside the registry; VirtualService destinations keep the port their route names",
        ),
        field("bind", Leaf, Status::NotYet(Area::GatewaysL4), ""),
        field("captureMode", Leaf, Status::NotYet(Area::GatewaysL4), ""),
        field(
            "hosts",
            Leaf,
            Status::Enforced,
            "every `namespace/host` form (`./*`, `*/*`, `ns/*`, `*/host`, `ns/host`, `~` exclusions, wildcard names): the workload sees and reaches only those services, the VirtualServices of those hosts (and their destinations) and their DestinationRules; other hosts are outside the registry",
        ),
    ],
};

static OUTBOUND_TRAFFIC_POLICY: TypeDef = TypeDef {
    name: "OutboundTrafficPolicy",
    fields: &[
        field(
            "mode",
            Leaf,
            Status::Enforced,
            "replaces the bootstrap's `mesh.outboundTrafficPolicy` for the workload the Sidecar applies to (omitted: `REGISTRY_ONLY`, the proto's default)",
        ),
        field(
            "egressProxy",
            Struct(&DESTINATION),
            Status::Enforced,
            "under `ALLOW_ANY`, requests for hosts outside the workload's registry go to this destination (their authority kept) instead of passing through",
        ),
    ],
};

static PEER_AUTHENTICATION: TypeDef = TypeDef {
    name: "PeerAuthentication",
    fields: &[
        field("selector", Struct(&WORKLOAD_SELECTOR), Status::Enforced, ""),
        field("mtls", Struct(&MUTUAL_TLS), Status::Enforced, ""),
        field(
            "portLevelMtls",
            Map(&MUTUAL_TLS),
            Status::Enforced,
            "by the inbound listener of that workload port: ProxyBootstrap `inboundPorts`, or the main one for localApp's port; `UNSET` inherits the workload's mode",
        ),
    ],
};

static MUTUAL_TLS: TypeDef = TypeDef {
    name: "MutualTls",
    fields: &[field(
        "mode",
        Leaf,
        Status::Values(&MTLS_MODE),
        "the inbound listener (Istio's precedence; per port with `portLevelMtls`); STRICT needs ProxyBootstrap spec.identity",
    )],
};

static AUTHORIZATION_POLICY: TypeDef = TypeDef {
    name: "AuthorizationPolicy",
    fields: &[
        field("selector", Struct(&WORKLOAD_SELECTOR), Status::Enforced, ""),
        field(
            "targetRef",
            Struct(&POLICY_TARGET_REFERENCE),
            Status::NotYet(Area::GatewaysL4),
            "attaches the policy to a gateway or waypoint: a sidecar does not apply it, as Istio's",
        ),
        field(
            "targetRefs",
            Seq(&POLICY_TARGET_REFERENCE),
            Status::NotYet(Area::GatewaysL4),
            "attaches the policy to gateways or waypoints: a sidecar does not apply it, as Istio's",
        ),
        field("rules", Seq(&RULE), Status::Enforced, ""),
        field(
            "action",
            Leaf,
            Status::Values(&AUTHZ_ACTION),
            "CUSTOM needs an external authorizer; the proxy has none",
        ),
        field(
            "provider",
            Struct(&EXTENSION_PROVIDER),
            Status::Refused(Area::Security),
            "",
        ),
    ],
};

static POLICY_TARGET_REFERENCE: TypeDef = TypeDef {
    name: "PolicyTargetReference",
    fields: &[
        field("group", Leaf, Status::Refused(Area::Security), ""),
        field("kind", Leaf, Status::Refused(Area::Security), ""),
        field("name", Leaf, Status::Refused(Area::Security), ""),
        field("namespace", Leaf, Status::Refused(Area::Security), ""),
    ],
};

static RULE: TypeDef = TypeDef {
    name: "Rule",
    fields: &[
        field("from", Seq(&RULE_FROM), Status::Enforced, ""),
        field("to", Seq(&RULE_TO), Status::Enforced, ""),
        field("when", Seq(&CONDITION), Status::Enforced, ""),
    ],
};

static RULE_FROM: TypeDef = TypeDef {
    name: "RuleFrom",
    fields: &[field("source", Struct(&SOURCE), Status::Enforced, "")],
};

static SOURCE: TypeDef = TypeDef {
    name: "Source",
    fields: &[
        field("principals", Leaf, Status::Enforced, ""),
        field("notPrincipals", Leaf, Status::Enforced, ""),
        field(
            "requestPrincipals",
            Leaf,
            Status::Enforced,
            "`<iss>/<sub>` of the JWT that RequestAuthentication validated",
        ),
        field("notRequestPrincipals", Leaf, Status::Enforced, ""),
        field("namespaces", Leaf, Status::Enforced, ""),
        field("notNamespaces", Leaf, Status::Enforced, ""),
        field("serviceAccounts", Leaf, Status::Enforced, ""),
        field("notServiceAccounts", Leaf, Status::Enforced, ""),
        field("ipBlocks", Leaf, Status::Enforced, ""),
        field("notIpBlocks", Leaf, Status::Enforced, ""),
        field("remoteIpBlocks", Leaf, Status::Enforced, ""),
        field("notRemoteIpBlocks", Leaf, Status::Enforced, ""),
        field("trustDomains", Leaf, Status::Enforced, ""),
        field("notTrustDomains", Leaf, Status::Enforced, ""),
    ],
};

static RULE_TO: TypeDef = TypeDef {
    name: "RuleTo",
    fields: &[field("operation", Struct(&OPERATION), Status::Enforced, "")],
};

static OPERATION: TypeDef = TypeDef {
    name: "Operation",
    fields: &[
        field("hosts", Leaf, Status::Enforced, ""),
        field("notHosts", Leaf, Status::Enforced, ""),
        field("ports", Leaf, Status::Enforced, ""),
        field("notPorts", Leaf, Status::Enforced, ""),
        field("methods", Leaf, Status::Enforced, ""),
        field("notMethods", Leaf, Status::Enforced, ""),
        field("paths", Leaf, Status::Enforced, ""),
        field("notPaths", Leaf, Status::Enforced, ""),
    ],
};

static CONDITION: TypeDef = TypeDef {
    name: "Condition",
    fields: &[
        field("key", Leaf, Status::Custom(&AUTHZ_CONDITION_KEY), ""),
        field("values", Leaf, Status::Enforced, ""),
        field("notValues", Leaf, Status::Enforced, ""),
    ],
};

static EXTENSION_PROVIDER: TypeDef = TypeDef {
    name: "ExtensionProvider",
    fields: &[field("name", Leaf, Status::Refused(Area::Security), "")],
};

static REQUEST_AUTHENTICATION: TypeDef = TypeDef {
    name: "RequestAuthentication",
    fields: &[
        field("selector", Struct(&WORKLOAD_SELECTOR), Status::Enforced, ""),
        field(
            "targetRef",
            Struct(&POLICY_TARGET_REFERENCE),
            Status::NotYet(Area::GatewaysL4),
            "attaches the policy to gateways or waypoints: a sidecar does not apply it, as Istio's",
        ),
        field(
            "targetRefs",
            Seq(&POLICY_TARGET_REFERENCE),
            Status::NotYet(Area::GatewaysL4),
            "attaches the policy to gateways or waypoints: a sidecar does not apply it, as Istio's",
        ),
        field(
            "jwtRules",
            Seq(&JWT_RULE),
            Status::Enforced,
            "on the inbound listener (mesh-tls `jwt`, Envoy's `jwt_authn` as Istio configures it)",
        ),
    ],
};

static JWT_RULE: TypeDef = TypeDef {
    name: "JwtRule",
    fields: &[
        field(
            "issuer",
            Leaf,
            Status::Enforced,
            "a rule without issuer is refused by mesh-proxy's security step",
        ),
        field("audiences", Leaf, Status::Enforced, ""),
        field("jwksUri", Leaf, Status::Custom(&JWKS_URI), ""),
        field(
            "jwks",
            Leaf,
            Status::Enforced,
            "RSA, EC P-256/P-384 and Ed25519 keys; a rule with neither jwks nor jwksUri (OpenID discovery) is refused",
        ),
        field("fromHeaders", Seq(&JWT_HEADER), Status::Enforced, ""),
        field("fromParams", Leaf, Status::Enforced, ""),
        field("outputPayloadToHeader", Leaf, Status::Enforced, ""),
        field("fromCookies", Leaf, Status::Enforced, ""),
        field(
            "forwardOriginalToken",
            Leaf,
            Status::Enforced,
            "a token read from a header is removed unless set; one in a query parameter or a cookie stays, as Envoy",
        ),
        field(
            "outputClaimToHeaders",
            Seq(&CLAIM_TO_HEADER),
            Status::Enforced,
            "",
        ),
        field("timeout", Leaf, Status::Enforced, ""),
        field(
            "spaceDelimitedClaims",
            Leaf,
            Status::Refused(Area::Security),
            "",
        ),
    ],
};

static JWT_HEADER: TypeDef = TypeDef {
    name: "JwtHeader",
    fields: &[
        field("name", Leaf, Status::Enforced, ""),
        field("prefix", Leaf, Status::Enforced, ""),
    ],
};

static CLAIM_TO_HEADER: TypeDef = TypeDef {
    name: "ClaimToHeader",
    fields: &[
        field("header", Leaf, Status::Enforced, ""),
        field("claim", Leaf, Status::Enforced, ""),
    ],
};

static PROXY_BOOTSTRAP: TypeDef = TypeDef {
    name: "ProxyBootstrap",
    fields: &[
        field("concurrency", Leaf, Status::Enforced, ""),
        field("workload", Struct(&WORKLOAD), Status::Enforced, ""),
        field("mesh", Struct(&MESH_SETTINGS), Status::Enforced, ""),
        field("outbound", Struct(&OUTBOUND_LISTENER), Status::Enforced, ""),
        field("inbound", Struct(&INBOUND_LISTENER), Status::Enforced, ""),
        field(
            "gatewayPorts",
            Leaf,
            Status::Enforced,
            "server port → local port of the gateway listeners; unmapped server ports are bound as they are",
        ),
        field("gatewayAddress", Leaf, Status::Enforced, ""),
        field("credentialsDir", Leaf, Status::Enforced, ""),
        field(
            "outboundPorts",
            Leaf,
            Status::Enforced,
            "an L4 listener per entry on `outbound.address` (TCP/TLS routes; an HTTP-family port is proxied as opaque TCP there); a change takes effect at restart",
        ),
        field(
            "inboundPorts",
            Leaf,
            Status::Enforced,
            "a listener per workload port on `inbound.address`, forwarding to that port of localApp's host, under the port's `portLevelMtls`",
        ),
        field("admin", Struct(&ADMIN_LISTENER), Status::Enforced, ""),
        field(
            "identity",
            Struct(&IDENTITY),
            Status::Enforced,
            "the inbound listener's mTLS (PeerAuthentication) and auto mTLS to endpoints with a sidecar",
        ),
        field("limits", Struct(&LIMITS), Status::Enforced, ""),
        field("tracing", Struct(&TRACING), Status::Enforced, ""),
        field(
            "accessLog",
            Struct(&ACCESS_LOG),
            Status::Enforced,
            "both listeners; written by a thread of its own",
        ),
        field(
            "proxyHeaders",
            Struct(&PROXY_HEADERS),
            Status::Enforced,
            "read at start-up",
        ),
    ],
};

static PROXY_HEADERS: TypeDef = TypeDef {
    name: "ProxyHeaders",
    fields: &[
        field("server", Struct(&SERVER_HEADER), Status::Enforced, ""),
        field("attemptCount", Struct(&HEADER_SWITCH), Status::Enforced, ""),
        field(
            "envoyDebugHeaders",
            Struct(&HEADER_SWITCH),
            Status::Enforced,
            "the answers' `x-envoy-upstream-service-time` and `x-envoy-overloaded`",
        ),
    ],
};

static SERVER_HEADER: TypeDef = TypeDef {
    name: "ServerHeader",
    fields: &[
        field("disabled", Leaf, Status::Enforced, ""),
        field("value", Leaf, Status::Enforced, ""),
    ],
};

static HEADER_SWITCH: TypeDef = TypeDef {
    name: "HeaderSwitch",
    fields: &[field("disabled", Leaf, Status::Enforced, "")],
};

static TRACING: TypeDef = TypeDef {
    name: "Tracing",
    fields: &[
        field(
            "sampling",
            Leaf,
            Status::Enforced,
            "decides the sampled flag propagated upstream and which requests make spans",
        ),
        field("otlp", Struct(&OTLP), Status::Enforced, ""),
    ],
};

static OTLP: TypeDef = TypeDef {
    name: "Otlp",
    fields: &[
        field(
            "endpoint",
            Leaf,
            Status::Enforced,
            "OTLP/HTTP with protobuf; `http://` only",
        ),
        field("timeout", Leaf, Status::Enforced, ""),
    ],
};

static ACCESS_LOG: TypeDef = TypeDef {
    name: "AccessLog",
    fields: &[
        field("path", Leaf, Status::Enforced, ""),
        field("encoding", Leaf, Status::Enforced, ""),
    ],
};

static WORKLOAD: TypeDef = TypeDef {
    name: "Workload",
    fields: &[
        field(
            "name",
            Leaf,
            Status::Enforced,
            "a name: no traffic decision depends on it; Istio's metrics report it (`source_workload`, `destination_workload`)",
        ),
        field("namespace", Leaf, Status::Enforced, ""),
        field(
            "serviceAccount",
            Leaf,
            Status::Enforced,
            "the proxy's identity is `identity.spiffeId`; a service account that differs from it is a warning",
        ),
        field("labels", Leaf, Status::Enforced, ""),
        field("locality", Leaf, Status::Enforced, ""),
    ],
};

static MESH_SETTINGS: TypeDef = TypeDef {
    name: "MeshSettings",
    fields: &[
        field(
            "trustDomain",
            Leaf,
            Status::Enforced,
            "the trust domain of the identities expected of endpoints (their `serviceAccount`); a different `identity.spiffeId` trust domain is a warning",
        ),
        field("rootNamespace", Leaf, Status::Enforced, ""),
        field("outboundTrafficPolicy", Leaf, Status::Enforced, ""),
        field("clusterDomain", Leaf, Status::Enforced, ""),
    ],
};

static OUTBOUND_LISTENER: TypeDef = TypeDef {
    name: "OutboundListener",
    fields: &[
        field("address", Leaf, Status::Enforced, ""),
        field("port", Leaf, Status::Enforced, ""),
        field(
            "protocol",
            Leaf,
            Status::Values(&LISTENER_PROTOCOL),
            "the listener detects HTTP/1.1 and h2c whatever the value",
        ),
        field("trustEnvoyHeaders", Leaf, Status::Enforced, ""),
    ],
};

static INBOUND_LISTENER: TypeDef = TypeDef {
    name: "InboundListener",
    fields: &[
        field("address", Leaf, Status::Enforced, ""),
        field("port", Leaf, Status::Enforced, ""),
        field("localApp", Leaf, Status::Enforced, ""),
    ],
};

static ADMIN_LISTENER: TypeDef = TypeDef {
    name: "AdminListener",
    fields: &[
        field("address", Leaf, Status::Enforced, ""),
        field("port", Leaf, Status::Enforced, ""),
    ],
};

static IDENTITY: TypeDef = TypeDef {
    name: "Identity",
    fields: &[
        field(
            "spiffeId",
            Leaf,
            Status::Enforced,
            "must be the certificate's identity",
        ),
        field(
            "certificateChain",
            Leaf,
            Status::Enforced,
            "read at load, re-read when the file changes (rotation)",
        ),
        field("privateKey", Leaf, Status::Enforced, ""),
        field("trustBundle", Leaf, Status::Enforced, ""),
    ],
};

static LIMITS: TypeDef = TypeDef {
    name: "Limits",
    fields: &[
        field("maxRequestHeadersKb", Leaf, Status::Enforced, ""),
        field("maxRequestHeadersCount", Leaf, Status::Enforced, ""),
        field("requestHeadersTimeout", Leaf, Status::Enforced, ""),
        field(
            "streamIdleTimeout",
            Leaf,
            Status::Enforced,
            "also closes an idle WebSocket or CONNECT tunnel",
        ),
        field("connectTimeout", Leaf, Status::Enforced, ""),
        field(
            "tlsHandshakeTimeout",
            Leaf,
            Status::Enforced,
            "inbound mTLS handshakes",
        ),
        field("http2MaxConcurrentStreams", Leaf, Status::Enforced, ""),
        field("drainTimeout", Leaf, Status::Enforced, ""),
        field(
            "maxDownstreamConnections",
            Leaf,
            Status::Enforced,
            "over every listener; one over it is closed as soon as accepted",
        ),
    ],
};

static LOCAL_RATE_LIMIT: TypeDef = TypeDef {
    name: "LocalRateLimit",
    fields: &[
        field(
            "workloadSelector",
            Struct(&LABEL_SELECTOR),
            Status::Enforced,
            "applies when it selects the bootstrap workload, as an EnvoyFilter's",
        ),
        field(
            "context",
            Leaf,
            Status::Enforced,
            "`SIDECAR_OUTBOUND` (default) or `SIDECAR_INBOUND`: one bucket for the inbound listeners",
        ),
        field(
            "hosts",
            Leaf,
            Status::Enforced,
            "one bucket per host (Envoy's virtual-host config)",
        ),
        field(
            "routes",
            Leaf,
            Status::Enforced,
            "`HTTPRoute.name`; one bucket per route of each host (Envoy's route config)",
        ),
        field("tokenBucket", Struct(&TOKEN_BUCKET), Status::Enforced, ""),
        field("statusCode", Leaf, Status::Enforced, ""),
        field("enableXRateLimitHeaders", Leaf, Status::Enforced, ""),
        field(
            "responseHeadersToAdd",
            Leaf,
            Status::Enforced,
            "literal values, on limited answers",
        ),
    ],
};

static TOKEN_BUCKET: TypeDef = TypeDef {
    name: "TokenBucketSpec",
    fields: &[
        field("maxTokens", Leaf, Status::Enforced, ""),
        field("tokensPerFill", Leaf, Status::Enforced, ""),
        field("fillInterval", Leaf, Status::Enforced, ""),
    ],
};

// === Telemetry ===

static TELEMETRY: TypeDef = TypeDef {
    name: "Telemetry",
    fields: &[
        field(
            "selector",
            Struct(&WORKLOAD_SELECTOR),
            Status::Enforced,
            "applies when it selects the bootstrap workload, in the workload's namespace; without one, to every workload of its namespace (of the mesh, in the root namespace)",
        ),
        field(
            "targetRef",
            Struct(&POLICY_TARGET_REFERENCE),
            Status::NotYet(Area::GatewaysL4),
            "attaches it to gateways or waypoints: a sidecar does not apply it, as Istio's",
        ),
        field(
            "targetRefs",
            Seq(&POLICY_TARGET_REFERENCE),
            Status::NotYet(Area::GatewaysL4),
            "attaches it to gateways or waypoints: a sidecar does not apply it, as Istio's",
        ),
        field("tracing", Seq(&TELEMETRY_TRACING), Status::Enforced, ""),
        field("metrics", Seq(&TELEMETRY_METRICS), Status::Enforced, ""),
        field(
            "accessLogging",
            Seq(&TELEMETRY_ACCESS_LOGGING),
            Status::Enforced,
            "",
        ),
    ],
};

static TELEMETRY_MODE: TypeDef = TypeDef {
    name: "ModeSelector",
    fields: &[field(
        "mode",
        Leaf,
        Status::Enforced,
        "`CLIENT`: the outbound listener and gateways (`reporter=\"source\"`); `SERVER`: the inbound listener (`reporter=\"destination\"`)",
    )],
};

static TRACING_PROVIDER: TypeDef = TypeDef {
    name: "ProviderRef",
    fields: &[field(
        "name",
        Leaf,
        Status::NotYet(Area::Later),
        "the proxy has one tracer, ProxyBootstrap's `tracing` (spans to `tracing.otlp`): a named provider is not looked up, and the entry's settings apply to that tracer",
    )],
};

static TELEMETRY_TRACING: TypeDef = TypeDef {
    name: "Tracing",
    fields: &[
        field("match", Struct(&TELEMETRY_MODE), Status::Enforced, ""),
        field("providers", Seq(&TRACING_PROVIDER), Status::Enforced, ""),
        field(
            "randomSamplingPercentage",
            Leaf,
            Status::Enforced,
            "replaces ProxyBootstrap's `tracing.sampling` on its side",
        ),
        field(
            "disableSpanReporting",
            Leaf,
            Status::Enforced,
            "no span is exported from its side; the side still makes sampling decisions and propagates trace headers (Istio removes the side's tracing altogether)",
        ),
        field(
            "customTags",
            Map(&CUSTOM_TAG),
            Status::Enforced,
            "span attributes; the last entry that sets the map replaces it whole, as Istio's",
        ),
        field(
            "useRequestIdForTraceSampling",
            Leaf,
            Status::NotYet(Area::Later),
            "the sampling decision is random, not derived from `x-request-id`",
        ),
        field(
            "enableIstioTags",
            Leaf,
            Status::NotYet(Area::Later),
            "spans always carry Istio's tags",
        ),
        field(
            "disableContextPropagation",
            Leaf,
            Status::NotYet(Area::Later),
            "trace headers are always propagated",
        ),
    ],
};

static CUSTOM_TAG: TypeDef = TypeDef {
    name: "CustomTag",
    fields: &[
        field("literal", Struct(&TAG_LITERAL), Status::Enforced, ""),
        field(
            "environment",
            Struct(&TAG_SOURCE),
            Status::Enforced,
            "the proxy's environment variable, read when the configuration is applied; without it and without a default, or with an empty value, no tag",
        ),
        field(
            "header",
            Struct(&TAG_SOURCE),
            Status::Enforced,
            "the request's header as the proxy sent it upstream (after the mesh's changes: a header a validated JWT's rule removed is gone); a request the mesh answered itself, or one without the header, has the default; without a default, or with an empty value, no tag",
        ),
        field(
            "formatter",
            Struct(&TAG_LITERAL),
            Status::NotYet(Area::Later),
            "Envoy's access-log formatter strings are not evaluated: no tag",
        ),
    ],
};

static TAG_LITERAL: TypeDef = TypeDef {
    name: "TagLiteral",
    fields: &[field("value", Leaf, Status::Enforced, "")],
};

static TAG_SOURCE: TypeDef = TypeDef {
    name: "TagSource",
    fields: &[
        field("name", Leaf, Status::Enforced, ""),
        field("defaultValue", Leaf, Status::Enforced, ""),
    ],
};

/// A metrics provider's name: Istio's built-in `prometheus` (case-insensitive, as
/// Istio's `fetchProvider`), or one this proxy does not have.
static METRICS_PROVIDER_NAME: Custom = Custom {
    doc: "`prometheus` (any case) is enforced; another name is not yet",
    check: |node| provider_name(node, crate::telemetry::PROMETHEUS_PROVIDER),
};

/// An access log provider's name: Istio's built-in `envoy` (any case), or another.
static ACCESS_LOG_PROVIDER_NAME: Custom = Custom {
    doc: "`envoy` (any case) is enforced; another name is not yet",
    check: |node| provider_name(node, crate::telemetry::ENVOY_PROVIDER),
};

fn provider_name(node: &MarkedYaml<'_>, builtin: &str) -> Option<(Verdict, String)> {
    let name = key_text(node)?;
    (!name.eq_ignore_ascii_case(builtin)).then(|| {
        (
            Verdict::NotYet(Area::Later),
            format!("provider {name:?} is "),
        )
    })
}

/// A Telemetry's metrics provider: Istio's `prometheus` is the one this proxy has.
static METRICS_PROVIDER: TypeDef = TypeDef {
    name: "ProviderRef",
    fields: &[field(
        "name",
        Leaf,
        Status::Custom(&METRICS_PROVIDER_NAME),
        "`prometheus` (Istio's default provider): `/stats/prometheus`; another provider is not one this proxy has, and is skipped, as Istio skips a provider it does not know",
    )],
};

static TELEMETRY_METRICS: TypeDef = TypeDef {
    name: "Metrics",
    fields: &[
        field(
            "providers",
            Seq(&METRICS_PROVIDER),
            Status::Enforced,
            "the last entry that names providers chooses them; without `prometheus` among them, no metric is made",
        ),
        field("overrides", Seq(&METRICS_OVERRIDES), Status::Enforced, ""),
        field(
            "reportingInterval",
            Leaf,
            Status::Enforced,
            "how often the L4 listeners add an open TCP connection's bytes to `istio_tcp_*`, and the record layer an open gRPC call's messages to `istio_request_messages_total` and `istio_response_messages_total`, as Istio's `tcp_reporting_duration` paces both (both sides: Istio keeps it per provider; default 5 s, Istio's; `0s`: only at the end, where Istio reports a gRPC stream without pause); the last entry that sets it for `prometheus`",
        ),
    ],
};

static METRICS_OVERRIDES: TypeDef = TypeDef {
    name: "MetricsOverrides",
    fields: &[
        field("match", Struct(&METRIC_SELECTOR), Status::Enforced, ""),
        field(
            "disabled",
            Leaf,
            Status::Enforced,
            "the metric is neither recorded nor exposed on its side (the request count and the duration histogram share one count: either one on counts the request; a TCP connection counts as the metrics were when it opened)",
        ),
        field(
            "tagOverrides",
            Map(&TAG_OVERRIDE),
            Status::Enforced,
            "on the HTTP and TCP metrics of the side (Istio's proxy's `tags_to_remove` and `dimensions`): `REMOVE` leaves a standard label out (another name is ignored, and warned about); `UPSERT` gives a standard label the CEL expression's value in its place, and adds another name after the standard labels (in name order; characters Prometheus does not take become `_`; `le`, `__…` and a name that would repeat a label are not added, and warned about); a value that fails, or is `null`, a list or a map, is `unknown`; a value is cut at 1024 bytes (Envoy does not cut); evaluated per request, and when a TCP connection opens (its expressions read its upstream and `connection.mtls`); a metric's series recorded under earlier overrides stay (`mesh_telemetry::metrics`)",
        ),
    ],
};

static METRIC_SELECTOR: TypeDef = TypeDef {
    name: "MetricSelector",
    fields: &[
        field(
            "metric",
            Leaf,
            Status::Enforced,
            "every one of Istio's standard metrics; `GRPC_REQUEST_MESSAGES` and `GRPC_RESPONSE_MESSAGES` (`istio_request_messages_total`, `istio_response_messages_total`: a gRPC call's messages each way, added every `reportingInterval` while it is open and at its end, with the reporter's and the peer's labels only, as Istio's stats filter records them; overrides of the labels they do not have do nothing, as in Istio)",
        ),
        field(
            "customMetric",
            Leaf,
            Status::NotYet(Area::Later),
            "this proxy makes Istio's standard metrics only",
        ),
        field("mode", Leaf, Status::Enforced, ""),
    ],
};

static TAG_OVERRIDE: TypeDef = TypeDef {
    name: "TagOverride",
    fields: &[
        field("operation", Leaf, Status::Enforced, ""),
        field(
            "value",
            Leaf,
            Status::Custom(&TAG_OVERRIDE_VALUE),
            "a CEL expression over the attributes the access log's filter reads (`request.*`, `response.*`, `source.*`, `destination.*` (the listener's address), `connection.*`, `upstream.*`, `xds.*`, and Istio's peer metadata as far as the proxy knows it: `upstream_peer.{workload,namespace,app,version,service,revision,labels}` from the endpoint's configuration, `downstream_peer.namespace` from the peer's certificate), within the same bounds; one this proxy cannot compile is warned about, and the label left out, as Istio's proxy does",
        ),
    ],
};

/// A label override's expression reading an attribute the proxy does not fill: it fails,
/// and the label is `unknown`.
static TAG_OVERRIDE_VALUE: Custom = Custom {
    doc: "enforced when every attribute it reads is one the proxy fills; not yet otherwise",
    check: |node| unfilled_attributes(node, "the expression fails, and the label is `unknown`"),
};

/// The verdict on a CEL expression (a Telemetry's) reading attributes the proxy does not
/// fill: not yet, saying which and what follows (`then`).
fn unfilled_attributes(node: &MarkedYaml<'_>, then: &str) -> Option<(Verdict, String)> {
    let text = key_text(node)?;
    let missing = crate::telemetry::unsupported_attributes(&text);
    (!missing.is_empty()).then(|| {
        (
            Verdict::NotYet(Area::Later),
            format!(
                "reading {} (not filled by this proxy: {then}) is ",
                missing.join(", ")
            ),
        )
    })
}

static ACCESS_LOG_PROVIDER: TypeDef = TypeDef {
    name: "ProviderRef",
    fields: &[field(
        "name",
        Leaf,
        Status::Custom(&ACCESS_LOG_PROVIDER_NAME),
        "`envoy` (Istio's built-in file log): lines to `/dev/stdout` in ProxyBootstrap's `accessLog.encoding` (Istio's `accessLogEncoding`); another provider is not one this proxy has, and is skipped, as Istio skips a provider it does not know",
    )],
};

static TELEMETRY_ACCESS_LOGGING: TypeDef = TypeDef {
    name: "AccessLogging",
    fields: &[
        field("match", Struct(&TELEMETRY_MODE), Status::Enforced, ""),
        field("providers", Seq(&ACCESS_LOG_PROVIDER), Status::Enforced, ""),
        field("disabled", Leaf, Status::Enforced, ""),
        field(
            "filter",
            Struct(&LOG_FILTER),
            Status::Enforced,
            "a line is written when the CEL expression is `true` (Envoy's CEL access-log filter; an error skips the line), on HTTP and TCP lines; at most 1024 bytes, 32 levels of brackets or unary operators and 100 levels of tree, no message literal (`mesh_core::telemetry::compile_filter`); where cel-rust differs from Envoy's CEL: an absent header reads as `null`, header names match as written, an error left of `||` is the result (`mesh_telemetry::log_filter`)",
        ),
    ],
};

static LOG_FILTER: TypeDef = TypeDef {
    name: "LogFilter",
    fields: &[field(
        "expression",
        Leaf,
        Status::Custom(&LOG_FILTER_EXPRESSION),
        "Envoy's attributes the proxy knows (`mesh_core::telemetry::FILTER_ATTRIBUTES`): `request.*` (path, url_path, host, scheme, method, headers, referer, useragent, id, protocol, duration, size), `response.*` (code, code_details, grpc_status, size), `source.*`, `destination.*`, `connection.mtls`, `connection.requested_server_name`, `upstream.*` (address, port, local_address, transport_failure_reason), `xds.cluster_name`, `xds.route_name`, Istio's `upstream_peer.*` (workload, namespace, app, version, service, revision, labels: the endpoint's configuration) and `downstream_peer.namespace` (the peer's certificate)",
    )],
};

/// A filter expression reading an attribute the proxy does not fill: it always fails,
/// and the line is skipped (Envoy's filter on an error).
static LOG_FILTER_EXPRESSION: Custom = Custom {
    doc: "enforced when every attribute it reads is one the proxy fills; not yet otherwise",
    check: |node| {
        unfilled_attributes(
            node,
            "the expression fails where it reads it, and the line is skipped",
        )
    },
};
