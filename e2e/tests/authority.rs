//! The request's authority through the whole proxy (listener → router → balancer →
//! connector → a real upstream), sent as raw bytes where a client library would not send
//! them: two `Host` fields or a list (400), userinfo (400, not 503), and an absolute-form
//! target whose authority, not `Host`, is what routing, policy and the upstream all see.
//! Every refused request reaches no backend, and the proxy keeps serving.

use crate::support;

use support::*;

/// A backend that reports the `Host` and `x-authority` it received (`x-seen-host`,
/// `x-seen-authority`) besides its name.
fn reporting(name: &'static str) -> Handler {
    std::sync::Arc::new(move |req: http::Request<hyper::body::Incoming>| {
        let seen = |n: &str| {
            req.headers()
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap_or("?").to_owned())
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let (host, authority) = (seen("host"), seen("x-authority"));
        Box::pin(async move {
            http::Response::builder()
                .header("x-backend", name)
                .header("x-seen-host", host)
                .header("x-seen-authority", authority)
                .body(full(name))
                .unwrap()
        })
    })
}

/// `web` and `other`, each a service of its own; a VirtualService on `other` hands the
/// authority it routed by to the upstream (`x-authority: %REQ(:authority)%`).
async fn two_services() -> (Backend, Backend, Running) {
    let web = backend_with("web", reporting("web")).await;
    let other = backend_with("other", reporting("other")).await;
    let yaml = format!(
        "{}{}{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: other}}
spec:
  hosts: [other]
  http:
  - headers:
      request:
        set: {{x-authority: '%REQ(:authority)%'}}
    route:
    - destination: {{host: other}}
",
        bootstrap(1, "  mesh: {outboundTrafficPolicy: ALLOW_ANY}\n"),
        service_entry("web", 80, "HTTP", &[&web]),
        service_entry("other", 80, "HTTP", &[&other]),
    );
    let p = start(&yaml).await;
    (web, other, p)
}

fn assert_refused(what: &str, answer: &str, status: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status}")),
        "{what}: {answer:?}"
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-mesh-response-flags: dpe"),
        "{what}: {answer:?}"
    );
    assert!(
        !answer.contains("x-backend"),
        "{what} reached a backend: {answer:?}"
    );
}

/// RFC 9112 §3.2: more than one `Host` field line, or a `Host` value that is not one
/// authority, is a 400. `h2load --h1 -H 'Host: x'` sends two; the proxy used to route by
/// the first and forward both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_fields_or_a_host_list_are_400_and_reach_no_backend() {
    let (web, other, p) = two_services().await;
    let mut good = H1::connect(p.out).await;
    for (what, bytes) in [
        (
            "two Host fields",
            "GET / HTTP/1.1\r\nHost: web\r\nHost: other\r\n\r\n",
        ),
        (
            "the same Host twice",
            "GET / HTTP/1.1\r\nHost: web\r\nHost: web\r\n\r\n",
        ),
        ("a Host list", "GET / HTTP/1.1\r\nHost: web, other\r\n\r\n"),
        (
            "two Host fields with an absolute target",
            "GET http://web/ HTTP/1.1\r\nHost: web\r\nHost: other\r\n\r\n",
        ),
    ] {
        let answer = raw(p.out, bytes.as_bytes()).await;
        assert_refused(what, &answer, "400");
        // the proxy keeps serving
        assert_eq!(good.get("web", &[]).await.backend(), "web", "after {what}");
    }
    assert_eq!((web.hits(), other.hits()), (4, 0), "only the good requests");
}

/// RFC 9110 §4.2.4: no userinfo in an `http` URI, so none in `Host` nor in the target; Envoy
/// refuses both. The proxy answered 503 (no such host `evil@web`) or forwarded (the router
/// dropped the userinfo of an absolute target); now 400, before anything is looked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_in_host_or_target_is_400_not_503_and_reaches_no_backend() {
    let (web, other, p) = two_services().await;
    let mut good = H1::connect(p.out).await;
    for (what, bytes) in [
        (
            "userinfo in Host",
            "GET / HTTP/1.1\r\nHost: evil@web\r\n\r\n",
        ),
        (
            "user and password in Host",
            "GET / HTTP/1.1\r\nHost: user:pw@web:80\r\n\r\n",
        ),
        (
            "userinfo in an absolute target",
            "GET http://evil@web/ HTTP/1.1\r\nHost: web\r\n\r\n",
        ),
    ] {
        let answer = raw(p.out, bytes.as_bytes()).await;
        assert_refused(what, &answer, "400");
        assert_eq!(good.get("web", &[]).await.backend(), "web", "after {what}");
    }
    assert_eq!((web.hits(), other.hits()), (3, 0), "only the good requests");
}

/// RFC 9112 §3.2.2: with an absolute-form target the received `Host` is ignored, and a proxy
/// forwards a `Host` generated from the target (Envoy does the same). `GET http://other/`
/// with `Host: web` used to be routed to `other` and forwarded with `Host: web`: now the
/// router, the route's header policy and the upstream all see `other`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_is_the_authority_for_routing_policy_and_upstream() {
    let (web, other, p) = two_services().await;
    let mut s = bounded(tokio::net::TcpStream::connect(p.out))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"GET http://other/x HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    bounded(tokio::io::AsyncReadExt::read_to_string(&mut s, &mut answer))
        .await
        .unwrap();
    let answer = answer.to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("x-backend: other\r\n"), "routing: {answer}");
    assert!(
        answer.contains("x-seen-authority: other\r\n"),
        "policy: {answer}"
    );
    assert!(
        answer.contains("x-seen-host: other\r\n"),
        "upstream: {answer}"
    );
    assert_eq!((web.hits(), other.hits()), (0, 1));
    // the same target with its own Host is unchanged
    let answer = raw(
        p.out,
        b"GET http://web/ HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert!(answer.contains("x-seen-host: web\r\n"), "{answer}");
    assert_eq!((web.hits(), other.hits()), (1, 1));
}
