#![allow(clippy::unwrap_used)]

use super::*;

/// The sidecar of `curl` in istio.io's "Envoy Access Logs" task (Default access log
/// format): `[2020-11-25T21:26:18.409Z] "GET /status/418 HTTP/1.1" 418 - via_upstream - …`.
fn istio_docs_example() -> LogEntry<'static> {
    let mut e = LogEntry::new(UNIX_EPOCH + Duration::from_millis(1_606_339_578_409));
    e.method = "GET";
    e.path = "/status/418";
    e.protocol = "HTTP/1.1";
    e.response_code = 418;
    e.response_code_details = "via_upstream";
    e.bytes_received = 0;
    e.bytes_sent = 135;
    e.duration = Some(Duration::from_micros(4_900));
    e.upstream_service_time = Some(Duration::from_micros(4_300));
    e.user_agent = Some("curl/7.73.0-DEV");
    e.request_id = Some("84961386-6d84-929d-98bd-c5aee93b5c88");
    e.authority = Some("httpbin:8000");
    e.upstream_host = Some("10.44.1.27:80".parse().unwrap());
    e.upstream_cluster = Some("outbound|8000||httpbin.foo.svc.cluster.local");
    e.upstream_local_address = Some("10.44.1.23:37652".parse().unwrap());
    e.downstream_local_address = Some("10.0.45.184:8000".parse().unwrap());
    e.downstream_remote_address = Some("10.44.1.23:46520".parse().unwrap());
    e.route_name = Some("default");
    e
}

fn text_of(e: &LogEntry<'_>) -> String {
    let mut out = Vec::new();
    Encoding::Text.format(e, &mut out);
    String::from_utf8(out).unwrap()
}

fn json_of(e: &LogEntry<'_>) -> serde_json::Value {
    let mut out = Vec::new();
    Encoding::Json.format(e, &mut out);
    assert_eq!(out.last(), Some(&b'\n'));
    assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "one line");
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn text_is_istio_s_default_format_as_in_its_documented_example() {
    assert_eq!(
        text_of(&istio_docs_example()),
        "[2020-11-25T21:26:18.409Z] \"GET /status/418 HTTP/1.1\" 418 - via_upstream - \"-\" 0 135 4 4 \"-\" \"curl/7.73.0-DEV\" \"84961386-6d84-929d-98bd-c5aee93b5c88\" \"httpbin:8000\" \"10.44.1.27:80\" outbound|8000||httpbin.foo.svc.cluster.local 10.44.1.23:37652 10.0.45.184:8000 10.44.1.23:46520 - default\n"
    );
}

#[test]
fn text_writes_a_dash_for_what_a_local_reply_does_not_have() {
    // Envoy's example of a local reply: no upstream, no route, flag NR, code 404
    let mut e = LogEntry::new(UNIX_EPOCH);
    e.method = "GET";
    e.path = "/nowhere";
    e.response_code = 404;
    e.response_flags = "NR";
    e.response_code_details = "route_not_found";
    e.duration = Some(Duration::ZERO);
    assert_eq!(
        text_of(&e),
        "[1970-01-01T00:00:00.000Z] \"GET /nowhere HTTP/1.1\" 404 NR route_not_found - \"-\" 0 0 0 - \"-\" \"-\" \"-\" \"-\" \"-\" - - - - - -\n"
    );
}

#[test]
fn json_has_istio_s_keys_numbers_as_numbers_and_null_for_missing_values() {
    let mut e = istio_docs_example();
    e.trace_id = Some(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
    e.user_agent = Some("quote\" and \\ and \u{1}");
    let v = json_of(&e);
    assert_eq!(v["start_time"], "2020-11-25T21:26:18.409Z");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/status/418");
    assert_eq!(v["protocol"], "HTTP/1.1");
    assert_eq!(v["response_code"], 418);
    assert_eq!(v["response_flags"], "-");
    assert_eq!(v["response_code_details"], "via_upstream");
    assert_eq!(v["bytes_received"], 0);
    assert_eq!(v["bytes_sent"], 135);
    assert_eq!(v["duration"], 4);
    assert_eq!(v["upstream_service_time"], "4");
    assert_eq!(v["x_forwarded_for"], serde_json::Value::Null);
    assert_eq!(v["user_agent"], "quote\" and \\ and \u{1}");
    assert_eq!(v["request_id"], "84961386-6d84-929d-98bd-c5aee93b5c88");
    assert_eq!(v["authority"], "httpbin:8000");
    assert_eq!(v["upstream_host"], "10.44.1.27:80");
    assert_eq!(
        v["upstream_cluster"],
        "outbound|8000||httpbin.foo.svc.cluster.local"
    );
    assert_eq!(v["upstream_local_address"], "10.44.1.23:37652");
    assert_eq!(v["downstream_local_address"], "10.0.45.184:8000");
    assert_eq!(v["downstream_remote_address"], "10.44.1.23:46520");
    assert_eq!(v["requested_server_name"], serde_json::Value::Null);
    assert_eq!(v["route_name"], "default");
    assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    // Istio's 24 keys and trace_id
    assert_eq!(keys.len(), 25, "{keys:?}");
}

/// An inbound request over mTLS with every field a line can carry: the forwarded client,
/// the SNI, the upstream connection's address and the upstream service time.
fn inbound_over_mtls() -> LogEntry<'static> {
    let mut e = istio_docs_example();
    e.method = "POST";
    e.path = "/reviews/1";
    e.bytes_received = 11;
    e.bytes_sent = 2;
    e.upstream_service_time = Some(Duration::from_millis(12));
    e.x_forwarded_for = Some("10.1.2.3, 10.0.0.9");
    e.requested_server_name = Some("outbound_.9080_._.reviews.default.svc.cluster.local");
    e.upstream_local_address = Some("127.0.0.1:41234".parse().unwrap());
    e.upstream_host = Some("127.0.0.1:9080".parse().unwrap());
    e.upstream_cluster = Some("inbound|9080||");
    e
}

#[test]
fn text_writes_the_forwarded_client_the_sni_the_upstream_local_address_and_service_time() {
    assert_eq!(
        text_of(&inbound_over_mtls()),
        "[2020-11-25T21:26:18.409Z] \"POST /reviews/1 HTTP/1.1\" 418 - via_upstream - \"-\" 11 2 4 12 \"10.1.2.3, 10.0.0.9\" \"curl/7.73.0-DEV\" \"84961386-6d84-929d-98bd-c5aee93b5c88\" \"httpbin:8000\" \"127.0.0.1:9080\" inbound|9080|| 127.0.0.1:41234 10.0.45.184:8000 10.44.1.23:46520 outbound_.9080_._.reviews.default.svc.cluster.local default\n"
    );
}

#[test]
fn json_writes_the_forwarded_client_the_sni_the_upstream_local_address_and_service_time() {
    let v = json_of(&inbound_over_mtls());
    assert_eq!(v["bytes_received"], 11);
    assert_eq!(v["bytes_sent"], 2);
    // a header's value: a string, as Envoy's %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
    assert_eq!(v["upstream_service_time"], "12");
    assert_eq!(v["x_forwarded_for"], "10.1.2.3, 10.0.0.9");
    assert_eq!(
        v["requested_server_name"],
        "outbound_.9080_._.reviews.default.svc.cluster.local"
    );
    assert_eq!(v["upstream_local_address"], "127.0.0.1:41234");
    assert_eq!(v["upstream_host"], "127.0.0.1:9080");
    assert_eq!(v["trace_id"], serde_json::Value::Null, "no trace context");
}

#[test]
fn json_writes_response_code_0_and_null_service_time_for_no_response() {
    // Envoy's %RESPONSE_CODE% is 0 when no response was sent (the client went away)
    let mut e = LogEntry::new(UNIX_EPOCH);
    e.method = "GET";
    e.path = "/";
    e.response_flags = "DC";
    let v = json_of(&e);
    assert_eq!(v["response_code"], 0);
    assert_eq!(v["response_flags"], "DC");
    assert_eq!(v["upstream_service_time"], serde_json::Value::Null);
    assert_eq!(v["upstream_local_address"], serde_json::Value::Null);
    assert!(text_of(&e).contains("\" 0 DC - - \"-\" 0 0 - - \"-\""));
}

#[test]
fn dates_are_proleptic_gregorian_utc() {
    for (days, date) in [
        (0, (1970, 1, 1)),
        (59, (1970, 3, 1)),
        (11_016, (2000, 2, 29)),
        (18_591, (2020, 11, 25)),
        (-1, (1969, 12, 31)),
    ] {
        assert_eq!(civil_from_days(days), date, "{days}");
    }
}

#[test]
fn the_writer_writes_lines_in_order_and_reopens_after_rotation() {
    let dir = std::env::temp_dir().join(format!("mesh-al-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    let _ = std::fs::remove_file(&path);
    let w = AccessLogWriter::open(&path, 16).unwrap();
    w.write(b"one\n".to_vec());
    w.write(b"two\n".to_vec());
    w.flush();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
    // logrotate moved the file away: reopen writes a new one
    let rotated = dir.join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    w.reopen();
    w.write(b"three\n".to_vec());
    w.flush();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\ntwo\n");
    assert_eq!(w.dropped(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_queue_drops_lines_and_counts_them() {
    // a queue of one that no thread drains (a writer thread held up by a slow disk)
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let w = AccessLogWriter {
        tx,
        spare: Default::default(),
        dropped: std::sync::atomic::AtomicU64::new(0),
        path: "unused".into(),
        pending: Default::default(),
        high: 1,
        thread: None,
    };
    for _ in 0..4 {
        w.write(b"x\n".to_vec());
    }
    assert_eq!(w.dropped(), 3);
    drop(rx);
}

#[test]
fn written_lines_buffers_are_reused() {
    let dir = std::env::temp_dir().join(format!("mesh-al-reuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let w = AccessLogWriter::open(dir.join("access.log"), 16).unwrap();
    let mut line = w.buffer(384);
    line.extend_from_slice(b"one\n");
    let at = line.as_ptr();
    w.write(line);
    w.flush();
    // this test's thread has no buffer of its own yet: it takes the written one back
    let again = w.buffer(1);
    assert_eq!(again.as_ptr(), at, "the written line's buffer");
    assert!(again.is_empty() && again.capacity() >= 384);
    assert_eq!(
        std::fs::read_to_string(dir.join("access.log")).unwrap(),
        "one\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// The hand-written formatters write what `core::fmt` and serde_json write.
proptest::proptest! {
    #[test]
    fn socket_addresses_are_written_as_their_display(
        v4 in proptest::prelude::any::<[u8; 4]>(),
        v6 in proptest::prelude::any::<[u16; 8]>(),
        port in proptest::prelude::any::<u16>(),
    ) {
        for a in [
            SocketAddr::from((v4, port)),
            SocketAddr::from((std::net::Ipv6Addr::from(v6), port)),
        ] {
            // twice: written, then from the thread's cache
            for _ in 0..2 {
                let mut out = Vec::new();
                put_socket_addr(&mut out, a);
                proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), a.to_string());
            }
        }
    }

    #[test]
    fn json_strings_are_what_serde_json_writes(s in "\\PC*|[\\x00-\\x7f]{0,40}") {
        let mut out = Vec::new();
        json_string(&mut out, &s);
        let back: String = serde_json::from_slice(&out).unwrap();
        proptest::prop_assert_eq!(back, s);
    }

    #[test]
    fn times_are_written_as_before_the_per_second_cache(
        secs in 0u64..400_000_000_000,
        ms in 0u32..1000,
        again in 0u32..1000,
    ) {
        let old = |t: SystemTime| {
            let d = t.duration_since(UNIX_EPOCH).unwrap();
            let secs = d.as_secs();
            let (y, m, day) = civil_from_days((secs / 86_400) as i64);
            let rem = secs % 86_400;
            format!(
                "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60,
                d.subsec_millis()
            )
        };
        // twice in one second: the second one from the cache
        for ms in [ms, again] {
            let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(u64::from(ms));
            let mut out = Vec::new();
            put_time(&mut out, t);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), old(t));
        }
    }

    #[test]
    fn trace_ids_are_32_hex_digits(v in proptest::prelude::any::<u128>()) {
        let mut buf = [0u8; 32];
        proptest::prop_assert_eq!(hex32(v, &mut buf), format!("{v:032x}"));
    }
}

#[test]
fn a_tls_failure_to_the_upstream_is_its_transport_failure_reason() {
    const REASON: &str = "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end";
    let mut e = LogEntry::new(UNIX_EPOCH);
    e.method = "GET";
    e.path = "/";
    e.response_code = 503;
    e.response_flags = "URX,UF";
    e.response_code_details = "upstream_reset_before_response_started{remote_connection_failure}";
    e.upstream_transport_failure_reason = Some(REASON);
    let text = text_of(&e);
    assert!(
        text.contains(&format!(
            " 503 URX,UF upstream_reset_before_response_started{{remote_connection_failure}} - \"{REASON}\" 0 0 "
        )),
        "{text}"
    );
    assert_eq!(json_of(&e)["upstream_transport_failure_reason"], REASON);
    // none: a dash, and null
    e.upstream_transport_failure_reason = None;
    assert!(text_of(&e).contains("remote_connection_failure} - \"-\" 0 0 "));
    assert!(json_of(&e)["upstream_transport_failure_reason"].is_null());
}
