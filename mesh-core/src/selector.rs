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
