//! Labels and label selectors, as Kubernetes and Istio use them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A set of labels (`app: reviews`, `version: v1`). Ordered, so output is stable.
pub type Labels = BTreeMap<String, String>;

/// `istio.type.v1beta1.WorkloadSelector` (`selector.matchLabels`) of the security kinds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must all carry. Empty selects every workload in the namespace.
    #[serde(default)]
    pub match_labels: Labels,
}

/// `networking.v1alpha3.WorkloadSelector` (`workloadSelector.labels`) of the networking kinds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels a workload must all carry.
    #[serde(default)]
    pub labels: Labels,
}

/// Whether `labels` contains every key/value of `selector` (an empty selector matches all).
pub fn labels_match(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl WorkloadSelector {
    /// Whether a workload with `labels` is selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        labels_match(&self.match_labels, labels)
    }
}

impl LabelSelector {
    /// Whether a workload with `labels` is selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        labels_match(&self.labels, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels() -> impl Strategy<Value = Labels> {
        proptest::collection::btree_map("[a-z]{1,3}", "[a-z0-9]{0,2}", 0..6)
    }

    #[test]
    fn selector_semantics() {
        let l: Labels = [
            ("app".into(), "reviews".into()),
            ("version".into(), "v1".into()),
        ]
        .into();
        let sel = |kv: &[(&str, &str)]| -> Labels {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(
            labels_match(&sel(&[]), &l),
            "an empty selector selects everything"
        );
        assert!(labels_match(&sel(&[("version", "v1")]), &l));
        assert!(!labels_match(&sel(&[("version", "v2")]), &l));
        assert!(
            !labels_match(&sel(&[("version", "v1"), ("zone", "a")]), &l),
            "all labels must match"
        );
        let ws: WorkloadSelector =
            serde_json::from_str(r#"{"matchLabels": {"app": "reviews"}}"#).unwrap();
        assert!(ws.matches(&l));
        assert!(
            serde_json::from_str::<WorkloadSelector>(r#"{"labels": {}}"#).is_err(),
            "unknown field"
        );
        let ns: LabelSelector = serde_json::from_str(r#"{"labels": {"app": "ratings"}}"#).unwrap();
        assert!(!ns.matches(&l));
    }

    proptest! {
        #[test]
        fn a_subset_of_labels_always_matches(l in labels(), take in 0usize..6) {
            let sel: Labels = l.iter().take(take).map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert!(labels_match(&sel, &l));
        }

        #[test]
        fn match_is_containment(sel in labels(), l in labels()) {
            let expected = sel.iter().all(|(k, v)| l.get(k) == Some(v));
            prop_assert_eq!(labels_match(&sel, &l), expected);
            // adding labels to the workload never unselects it
            let mut more = l.clone();
            more.insert("zzz-extra".into(), "1".into());
            prop_assert!(!expected || labels_match(&sel, &more));
        }

        #[test]
        fn selectors_round_trip_through_json(l in labels()) {
            let ws = WorkloadSelector { match_labels: l };
            let back: WorkloadSelector = serde_json::from_str(&serde_json::to_string(&ws).unwrap()).unwrap();
            prop_assert_eq!(back, ws);
        }
    }
}
