use super::*;
use proptest::prelude::*;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn layer() -> TraceLayer {
    TraceLayer::new(TraceConfig::default().with_seed(42))
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

#[test]
fn w3c_context_is_continued_with_the_proxy_s_span_as_parent() {
    let mut h = headers(&[("traceparent", TP), ("tracestate", "congo=t61rcWkgMzE")]);
    // by default only what came in goes out
    let mut plain = h.clone();
    layer().propagate(&mut plain);
    assert!(plain.contains_key("traceparent") && !plain.contains_key("x-b3-traceid"));
    let both = TraceLayer::new(
        TraceConfig::default()
            .with_seed(42)
            .with_propagation(Propagation::B3_MULTI),
    );
    let ctx = both.propagate(&mut h);
    assert_eq!(ctx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_eq!(ctx.parent_span_id, Some(0x00f067aa0ba902b7));
    assert_ne!(ctx.span_id, 0x00f067aa0ba902b7);
    assert!(ctx.sampled);
    assert_eq!(
        get(&h, "traceparent").unwrap(),
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{:016x}-01",
            ctx.span_id
        )
    );
    assert_eq!(get(&h, "tracestate"), Some("congo=t61rcWkgMzE"));
    // B3 written too (configured), consistent with the W3C context
    assert_eq!(
        get(&h, "x-b3-traceid"),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(
        get(&h, "x-b3-spanid").unwrap(),
        format!("{:016x}", ctx.span_id)
    );
    assert_eq!(get(&h, "x-b3-parentspanid"), Some("00f067aa0ba902b7"));
    assert_eq!(get(&h, "x-b3-sampled"), Some("1"));
    // the decision "not sampled" is kept as well
    let mut h = headers(&[(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
    )]);
    let sampled_everything = TraceLayer::new(TraceConfig::default().with_sampling_percent(100.0));
    assert!(!sampled_everything.propagate(&mut h).sampled);
    assert!(get(&h, "traceparent").unwrap().ends_with("-00"));
}

#[test]
fn malformed_traceparents_are_ignored_and_the_trace_restarts() {
    for bad in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // uppercase (§3.2.2.3)
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01", // uppercase parent id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A", // uppercase flags
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902g7-01", // not hex
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // v00 with more fields
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  // short trace id
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // bad separator
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz", // bad flags
        "",
    ] {
        let mut h = headers(&[("traceparent", bad), ("tracestate", "a=b")]);
        let ctx = layer().propagate(&mut h);
        assert_ne!(ctx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736, "{bad}");
        assert_eq!(ctx.parent_span_id, None, "{bad}");
        let written = get(&h, "traceparent").unwrap();
        assert!(
            parse_traceparent(written.as_bytes()).is_some(),
            "{bad}: {written}"
        );
        assert_eq!(
            get(&h, "tracestate"),
            None,
            "a restarted trace drops tracestate"
        );
    }
}

#[test]
fn a_future_traceparent_version_with_more_fields_is_read() {
    // W3C §3.2.4: parse the four known fields of a higher version and ignore the rest
    let mut h = headers(&[(
        "traceparent",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
    )]);
    let ctx = layer().propagate(&mut h);
    assert_eq!(ctx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert!(get(&h, "traceparent").unwrap().starts_with("00-"));
}

#[test]
fn b3_multi_keeps_a_64_bit_trace_id_and_w3c_pads_it() {
    let mut h = headers(&[
        ("x-b3-traceid", "a3ce929d0e0e4736"),
        ("x-b3-spanid", "00f067aa0ba902b7"),
        ("x-b3-sampled", "0"),
    ]);
    // by default a B3 caller gets B3 back, and only B3 (Envoy's Zipkin tracer)
    let mut b3_only = h.clone();
    layer().propagate(&mut b3_only);
    assert!(!b3_only.contains_key("traceparent"));
    assert_eq!(get(&b3_only, "x-b3-traceid"), Some("a3ce929d0e0e4736"));
    let w3c_too = TraceLayer::new(
        TraceConfig::default()
            .with_seed(42)
            .with_propagation(Propagation::W3C),
    );
    let ctx = w3c_too.propagate(&mut h);
    assert_eq!(ctx.trace_id, 0xa3ce929d0e0e4736);
    assert!(!ctx.sampled);
    assert_eq!(get(&h, "x-b3-traceid"), Some("a3ce929d0e0e4736"));
    assert_eq!(get(&h, "x-b3-parentspanid"), Some("00f067aa0ba902b7"));
    assert_eq!(get(&h, "x-b3-sampled"), Some("0"));
    assert_eq!(
        get(&h, "traceparent").unwrap(),
        format!(
            "00-0000000000000000a3ce929d0e0e4736-{:016x}-00",
            ctx.span_id
        )
    );
}

#[test]
fn b3_debug_means_sampled_and_a_deferred_decision_is_the_proxy_s() {
    let mut h = headers(&[
        ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("x-b3-spanid", "00f067aa0ba902b7"),
        ("x-b3-flags", "1"),
    ]);
    let never = TraceLayer::new(TraceConfig::default().with_sampling_percent(0.0));
    assert!(never.propagate(&mut h).sampled, "debug forces sampling");
    assert_eq!(get(&h, "x-b3-flags"), None);
    assert_eq!(get(&h, "x-b3-sampled"), Some("1"));
    // no x-b3-sampled: deferred, decided by the proxy's sampling rate
    for (percent, expect) in [(0.0, false), (100.0, true)] {
        let mut h = headers(&[
            ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
        ]);
        let l = TraceLayer::new(TraceConfig::default().with_sampling_percent(percent));
        let ctx = l.propagate(&mut h);
        assert_eq!(ctx.sampled, expect);
        assert_eq!(ctx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    }
}

#[test]
fn b3_single_is_read_and_rewritten_and_a_bare_decision_carries_no_context() {
    let mut h = headers(&[(
        "b3",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
    )]);
    let ctx = layer().propagate(&mut h);
    assert_eq!(ctx.trace_id, 0x80f198ee56343ba864fe8b2a57d3eff7);
    assert_eq!(ctx.parent_span_id, Some(0xe457b5a2e4d86bd1));
    assert!(ctx.sampled);
    assert_eq!(
        get(&h, "b3").unwrap(),
        format!(
            "80f198ee56343ba864fe8b2a57d3eff7-{:016x}-1-e457b5a2e4d86bd1",
            ctx.span_id
        )
    );
    let always = TraceLayer::new(TraceConfig::default().with_sampling_percent(100.0));
    let mut h = headers(&[("b3", "0")]);
    let ctx = always.propagate(&mut h);
    assert_eq!(ctx.parent_span_id, None);
    assert!(
        !ctx.sampled,
        "the caller's bare decision holds for the new trace"
    );
    let mut lone = headers(&[("x-b3-sampled", "0")]);
    assert!(!always.propagate(&mut lone).sampled);
    assert_eq!(get(&lone, "x-b3-sampled"), Some("0"));
    let b3 = get(&h, "b3").unwrap();
    assert!(
        parse_b3_single(b3.as_bytes()).is_some(),
        "the bare decision is replaced by a whole context: {b3}"
    );
}

#[test]
fn traceparent_wins_over_b3_and_every_carried_format_is_made_consistent() {
    let mut h = headers(&[
        ("traceparent", TP),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
        ("x-b3-traceid", "garbage"),
        ("x-b3-spanid", "00f067aa0ba902b7"),
    ]);
    let l = TraceLayer::new(TraceConfig::default().with_propagation(Propagation::W3C));
    let ctx = l.propagate(&mut h);
    assert_eq!(ctx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    let e = Extracted::from_headers(&h).unwrap();
    assert_eq!(e.span_id, ctx.span_id);
    assert_eq!(
        parse_b3_single(get(&h, "b3").unwrap().as_bytes())
            .unwrap()
            .trace_id,
        ctx.trace_id
    );
    assert_eq!(parse_b3_multi(&h).unwrap().trace_id, ctx.trace_id);
}

#[test]
fn only_the_configured_formats_are_added() {
    let mut h = HeaderMap::new();
    let l = TraceLayer::new(TraceConfig::default().with_propagation(Propagation::B3_SINGLE));
    l.propagate(&mut h);
    assert!(h.contains_key("b3"));
    assert!(!h.contains_key("x-b3-traceid") && !h.contains_key("traceparent"));
    // nothing configured: a new trace is W3C's
    let mut h = HeaderMap::new();
    layer().propagate(&mut h);
    assert!(h.contains_key("traceparent"));
    assert!(!h.contains_key("x-b3-traceid") && !h.contains_key("b3"));
}

#[test]
fn x_request_id_is_kept_or_generated_as_a_uuid_v4() {
    let mut h = headers(&[("x-request-id", "abc")]);
    layer().propagate(&mut h);
    assert_eq!(get(&h, "x-request-id"), Some("abc"));
    let l = layer();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        let mut h = HeaderMap::new();
        l.propagate(&mut h);
        let id = get(&h, "x-request-id").unwrap().to_string();
        let b = id.as_bytes();
        assert_eq!(b.len(), 36, "{id}");
        assert!([8, 13, 18, 23].iter().all(|&i| b[i] == b'-'), "{id}");
        assert_eq!(b[14], b'4', "version 4: {id}");
        assert!(matches!(b[19], b'8' | b'9' | b'a' | b'b'), "variant: {id}");
        assert!(seen.insert(id));
    }
    let mut h = HeaderMap::new();
    TraceLayer::new(TraceConfig {
        generate_request_id: false,
        ..TraceConfig::default()
    })
    .propagate(&mut h);
    assert!(!h.contains_key("x-request-id"));
}

#[test]
fn new_traces_are_sampled_at_the_configured_rate() {
    // 20,000 draws at 1 %: mean 200, sd 14.1; ±6 sd
    let l = TraceLayer::new(TraceConfig::default().with_seed(3));
    let n = (0..20_000)
        .filter(|_| l.propagate(&mut HeaderMap::new()).sampled)
        .count();
    assert!((115..=285).contains(&n), "{n}");
    let l = TraceLayer::new(
        TraceConfig::default()
            .with_seed(3)
            .with_sampling_percent(50.0),
    );
    let n = (0..20_000)
        .filter(|_| l.propagate(&mut HeaderMap::new()).sampled)
        .count();
    // mean 10,000, sd 70.7
    assert!((9_576..=10_424).contains(&n), "{n}");
    // a reload changes the rate of the layer's services too
    let svc_layer = l.clone();
    l.set_sampling_percent(0.0);
    assert_eq!(svc_layer.sampling(), 0.0);
    assert!(!(0..1000).any(|_| svc_layer.propagate(&mut HeaderMap::new()).sampled));
}

#[tokio::test]
async fn the_layer_puts_the_context_in_the_request_extensions() {
    use tower::{ServiceBuilder, ServiceExt};
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service_fn(|req: http::Request<()>| async move { Ok::<_, std::convert::Infallible>(req) });
    let req = http::Request::builder()
        .header("traceparent", TP)
        .body(())
        .unwrap();
    let sent = svc.oneshot(req).await.unwrap();
    let ctx = crate::trace::trace_context(sent.extensions()).unwrap();
    assert_eq!(
        Extracted::from_headers(sent.headers()).unwrap().span_id,
        ctx.span_id
    );
    assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
}

proptest! {
    #[test]
    fn any_trace_headers_give_a_well_formed_context(
        tp in proptest::collection::vec(any::<u8>(), 0..80),
        b3 in "[0-9a-fA-F-]{0,80}",
        tid in "[0-9a-f]{0,40}",
        sid in "[0-9a-f]{0,20}",
    ) {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&tp) {
            h.insert(TRACEPARENT, v);
        }
        h.insert(B3, HeaderValue::from_str(&b3).unwrap());
        h.insert(X_B3_TRACEID, HeaderValue::from_str(&tid).unwrap());
        h.insert(X_B3_SPANID, HeaderValue::from_str(&sid).unwrap());
        let l = TraceLayer::new(TraceConfig::default().with_seed(42).with_propagation(Propagation::W3C));
        let ctx = l.propagate(&mut h);
        prop_assert!(ctx.trace_id != 0 && ctx.span_id != 0);
        let w3c = parse_traceparent(h[&TRACEPARENT].as_bytes()).unwrap();
        prop_assert_eq!(w3c.span_id, ctx.span_id);
        let single = parse_b3_single(h[&B3].as_bytes()).unwrap();
        prop_assert_eq!(single.span_id, ctx.span_id);
        let multi = parse_b3_multi(&h).unwrap();
        prop_assert_eq!(multi.span_id, ctx.span_id);
        prop_assert_eq!(multi.trace_id, single.trace_id);
    }
}

#[test]
fn ids_are_written_digit_for_digit() {
    // every digit in its place, the version and variant bits set (RFC 9562 §5.4)
    let id = uuid_v4(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
    assert_eq!(id, "01234567-89ab-4def-bedc-ba9876543210");
    let ctx = TraceContext {
        trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
        span_id: 0x00f0_67aa_0ba9_02b7,
        parent_span_id: None,
        sampled: true,
    };
    assert_eq!(traceparent(&ctx), TP);
    // an odd number of digits: the first is the lone high digit
    assert_eq!(hex_value(0xabc, 3), "abc");
    assert_eq!(hex_value(0xabc, 1), "c");
    assert_eq!(hex_value(u128::MAX, 32), "f".repeat(32).as_str());
}
