//! Property tests: route precedence against a reference model, and the weight distribution.

use proptest::prelude::*;

use crate::support::*;

#[derive(Debug, Clone)]
struct Rule {
    /// `None`: no uri condition.
    prefix: Option<&'static str>,
    /// `Some(v)`: header `x-v` must equal `v`.
    header: Option<&'static str>,
}

const PREFIXES: &[&str] = &["/", "/a", "/ab", "/b", "/abc"];
const VALUES: &[&str] = &["1", "2"];

fn rule() -> impl Strategy<Value = Rule> {
    (
        proptest::option::of(proptest::sample::select(PREFIXES)),
        proptest::option::of(proptest::sample::select(VALUES)),
    )
        .prop_map(|(prefix, header)| Rule { prefix, header })
}

fn yaml(rules: &[Rule]) -> String {
    let mut http = String::new();
    for (i, r) in rules.iter().enumerate() {
        let mut conds = Vec::new();
        if let Some(p) = r.prefix {
            conds.push(format!("uri: {{prefix: '{p}'}}"));
        }
        if let Some(v) = r.header {
            conds.push(format!("headers: {{x-v: {{exact: '{v}'}}}}"));
        }
        if conds.is_empty() {
            http.push_str(&format!(
                "  - route: [{{destination: {{host: r{i}.dest}}}}]\n"
            ));
        } else {
            http.push_str(&format!(
                "  - match: [{{{}}}]\n    route: [{{destination: {{host: r{i}.dest}}}}]\n",
                conds.join(", ")
            ));
        }
    }
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: p, namespace: default}}\nspec:\n  hosts: [p.example.com]\n  http:\n{http}"
    )
}

/// The reference: the first rule whose conditions all hold; a rule without conditions is a
/// catch-all.
fn model(rules: &[Rule], path: &str, header: Option<&str>) -> Option<usize> {
    rules.iter().position(|r| {
        r.prefix.is_none_or(|p| path.starts_with(p)) && r.header.is_none_or(|v| header == Some(v))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// VirtualService.http: first match wins; a rule without match catches everything.
    #[test]
    fn first_match_wins(rules in proptest::collection::vec(rule(), 1..8),
                        reqs in proptest::collection::vec((proptest::sample::select(&["/", "/a", "/abc/d", "/b", "/c", "/ab"][..]), proptest::option::of(proptest::sample::select(VALUES))), 1..12)) {
        let h = Harness::sidecar(&snap(&yaml(&rules)));
        block_on(async {
            for (path, header) in &reqs {
                let mut b = req("p.example.com", path);
                if let Some(v) = header {
                    b = b.header("x-v", *v);
                }
                let (res, seen) = h.send(b.body(String::new()).unwrap()).await;
                let got = seen.map(|s| s.host().trim_start_matches('r').split('.').next().unwrap().parse::<usize>().unwrap());
                let want = model(&rules, path, *header);
                assert_eq!(got, want, "{rules:?} {path} {header:?}");
                assert_eq!(res.status() == 404, want.is_none());
            }
        });
    }
}

const MANY_PREFIXES: &[&str] = &[
    "/", "/a", "/ab", "/b", "/abc", "/abc/", "/abc/d", "/api/v1/", "/api/v2/", "/api", "/a?x",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The same on hosts with enough routes to be served through the candidate index: the
    /// index never changes which rule wins.
    #[test]
    fn first_match_wins_on_indexed_hosts(
        rules in proptest::collection::vec(
            (proptest::option::of(proptest::sample::select(MANY_PREFIXES)),
             proptest::option::of(proptest::sample::select(VALUES)))
                .prop_map(|(prefix, header)| Rule { prefix, header }),
            9..40),
        reqs in proptest::collection::vec(
            (proptest::sample::select(&["/", "/a", "/abc/d/e", "/abc/", "/b", "/c", "/ab", "/api/v1/x", "/api/v2", "/a?x=1", "/apix"][..]),
             proptest::option::of(proptest::sample::select(VALUES))),
            1..16),
    ) {
        let h = Harness::sidecar(&snap(&yaml(&rules)));
        block_on(async {
            for (path, header) in &reqs {
                let mut b = req("p.example.com", path);
                if let Some(v) = header {
                    b = b.header("x-v", *v);
                }
                let (res, seen) = h.send(b.body(String::new()).unwrap()).await;
                let got = seen.map(|s| s.host().trim_start_matches('r').split('.').next().unwrap().parse::<usize>().unwrap());
                let want = model(&rules, path, *header);
                assert_eq!(got, want, "{rules:?} {path} {header:?}");
                assert_eq!(res.status() == 404, want.is_none());
            }
        });
    }
}

fn weights_yaml(weights: &[u32]) -> String {
    let mut dests = String::new();
    for (i, w) in weights.iter().enumerate() {
        dests.push_str(&format!(
            "    - {{destination: {{host: d.dest, subset: s{i}}}, weight: {w}}}\n"
        ));
    }
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: w, namespace: default}}\nspec:\n  hosts: [w.example.com]\n  http:\n  - route:\n{dests}"
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// Destinations are chosen with probability weight / sum: a chi-square test with a seeded
    /// generator (critical value for p = 0.001 at up to 5 degrees of freedom: 20.5).
    #[test]
    fn weights_follow_the_configured_split(weights in proptest::collection::vec(1u32..100, 2..6), seed in any::<u64>()) {
        let s = snap(&weights_yaml(&weights));
        let h = Harness::new(mesh_routing::RouteLayer::from_table(mesh_routing::RouteTable::sidecar(&s).unwrap()).with_seed(seed));
        let n = 6000u32;
        let mut counts = vec![0u32; weights.len()];
        block_on(async {
            for _ in 0..n {
                let (_, seen) = h.get("w.example.com", "/").await;
                let i: usize = seen.unwrap().subset().unwrap()[1..].parse().unwrap();
                counts[i] += 1;
            }
        });
        let total: u32 = weights.iter().sum();
        let chi2: f64 = weights.iter().zip(&counts).map(|(w, c)| {
            let expected = f64::from(n) * f64::from(*w) / f64::from(total);
            (f64::from(*c) - expected).powi(2) / expected
        }).sum();
        prop_assert!(chi2 < 20.5, "chi2 {chi2} weights {weights:?} counts {counts:?}");
    }
}
