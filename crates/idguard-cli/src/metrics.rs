//! `/metrics`: Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::response::Response;

use idguard::TokenStats;
use idguard::policy::{Disagreement, PolicyEngine};
use idguard::{Rejection, RejectionKind};

/// Request and rejection counters of the `idguard` server.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// By status class: 1xx..5xx.
    status: [AtomicU64; 5],
    rejections: [AtomicU64; RejectionKind::ALL.len()],
}

impl Metrics {
    pub(crate) fn observe(&self, res: &Response) {
        let class = usize::from(res.status().as_u16() / 100).saturating_sub(1);
        if let Some(c) = self.status.get(class) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(r) = res.extensions().get::<Rejection>()
            && let Some(i) = RejectionKind::ALL.iter().position(|k| *k == r.kind())
            && let Some(c) = self.rejections.get(i)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn render(
        &self,
        tokens: &TokenStats,
        policies: &PolicyEngine,
        obo: Option<idguard::obo::OboStats>,
        oauth: Option<idguard::oauth::OAuthStats>,
    ) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, help: &str, kind: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metric(
            "idguard_requests_total",
            "HTTP responses by status class.",
            "counter",
            &self
                .status
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("{{status=\"{}xx\"}}", i + 1), load(c)))
                .collect::<Vec<_>>(),
        );
        metric(
            "idguard_rejections_total",
            "Requests idguard answered itself, by kind.",
            "counter",
            &RejectionKind::ALL
                .iter()
                .zip(&self.rejections)
                .map(|(kind, c)| (format!("{{kind=\"{}\"}}", kind.as_str()), load(c)))
                .collect::<Vec<_>>(),
        );
        let cache_total = tokens.cache_hits + tokens.validations;
        metric(
            "idguard_token_validations_total",
            "Bearer tokens checked, by how.",
            "counter",
            &[
                ("{source=\"cache\"}".into(), tokens.cache_hits),
                ("{source=\"signature\"}".into(), tokens.validations),
            ],
        );
        metric(
            "idguard_token_cache_hit_percent",
            "Percentage of tokens accepted from the validated-token cache.",
            "gauge",
            &[(
                String::new(),
                (tokens.cache_hits * 100)
                    .checked_div(cache_total)
                    .unwrap_or(0),
            )],
        );
        metric(
            "idguard_jwks_age_seconds",
            "Age of the signing keys in use.",
            "gauge",
            &[(String::new(), tokens.keys_age_secs)],
        );
        let p = policies.stats();
        metric(
            "idguard_policy_decisions_total",
            "Call-phase policy decisions, by outcome.",
            "counter",
            &[
                ("{outcome=\"allow\"}".into(), p.allowed),
                ("{outcome=\"deny\"}".into(), p.denied),
            ],
        );
        metric(
            "idguard_policy_call_cached_total",
            "Call-phase decisions answered by the call-decision cache (of the decisions above).",
            "counter",
            &[(String::new(), p.call_cached)],
        );
        metric(
            "idguard_policy_list_items_total",
            "List items decided, by whether the decision cache answered.",
            "counter",
            &[
                ("{source=\"cache\"}".into(), p.list_cached),
                ("{source=\"evaluated\"}".into(), p.list_evaluated),
            ],
        );
        let status = policies.status();
        metric(
            "idguard_policy_epoch",
            "Epoch of the policies in force (increases on every successful reload).",
            "gauge",
            &[(String::new(), status.epoch)],
        );
        metric(
            "idguard_policy_reload_failing",
            "1 when the last policy reload failed and older policies are still in force.",
            "gauge",
            &[(String::new(), u64::from(status.last_error.is_some()))],
        );
        if let (Some(shadow), Some(stats)) = (policies.shadow(), policies.shadow_stats()) {
            let status = shadow.status();
            metric(
                "idguard_policy_shadow_epoch",
                "Epoch of the shadow policies (increases on every successful reload).",
                "gauge",
                &[(String::new(), status.epoch)],
            );
            metric(
                "idguard_policy_shadow_reload_failing",
                "1 when the last shadow policy reload failed and older shadow policies are still loaded.",
                "gauge",
                &[(String::new(), u64::from(status.last_error.is_some()))],
            );
            metric(
                "idguard_policy_shadow_compared_total",
                "Decisions also put to the shadow policies, by phase (list: one per listed item).",
                "counter",
                &[
                    ("{phase=\"list\"}".into(), stats.list_compared),
                    ("{phase=\"call\"}".into(), stats.call_compared),
                ],
            );
            let mut samples = Vec::new();
            for (phase, counts) in [
                ("list", stats.list_disagreements),
                ("call", stats.call_disagreements),
            ] {
                for (kind, n) in Disagreement::ALL.iter().zip(counts) {
                    samples.push((
                        format!("{{phase=\"{phase}\",direction=\"{}\"}}", kind.as_str()),
                        n,
                    ));
                }
            }
            metric(
                "idguard_policy_shadow_disagreements_total",
                "Decisions the shadow policies answer differently, by phase and direction.",
                "counter",
                &samples,
            );
            let mut samples = Vec::new();
            for item in &stats.items {
                for (kind, n) in Disagreement::ALL.iter().zip(item.counts) {
                    if n > 0 {
                        samples.push((
                            format!(
                                "{{action=\"{}\",item=\"{}\",direction=\"{}\"}}",
                                item.action.as_str(),
                                label_value(&item.item),
                                kind.as_str()
                            ),
                            n,
                        ));
                    }
                }
            }
            metric(
                "idguard_policy_shadow_item_disagreements_total",
                "Shadow disagreements by item and direction (both phases; the first 1000 items, then item=\"(other)\").",
                "counter",
                &samples,
            );
        }
        if let Some(o) = obo {
            metric(
                "idguard_obo_tokens_total",
                "On-behalf-of tokens handed out, by source.",
                "counter",
                &[
                    ("{source=\"cache\"}".into(), o.cache_hits),
                    ("{source=\"entra\"}".into(), o.exchanges),
                ],
            );
            metric(
                "idguard_obo_errors_total",
                "On-behalf-of exchanges that failed.",
                "counter",
                &[(String::new(), o.errors)],
            );
        }
        if let Some(o) = oauth {
            metric(
                "idguard_oauth_events_total",
                "OAuth proxy events.",
                "counter",
                &[
                    ("{event=\"registration\"}".into(), o.registrations),
                    ("{event=\"consent\"}".into(), o.consents),
                    ("{event=\"sign_in\"}".into(), o.sign_ins),
                    ("{event=\"refresh\"}".into(), o.refreshes),
                    ("{event=\"reuse_revocation\"}".into(), o.reuse_revocations),
                    ("{event=\"revocation\"}".into(), o.revocations),
                ],
            );
        }
        out
    }
}

/// A Prometheus label value: backslash, double quote and line feed escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn shadow_metrics_only_with_a_shadow_set() {
        let schema = include_str!("../../../policies/schema.cedarschema");
        let rules = [(
            "a.cedar",
            r#"@id("all") permit (principal, action, resource);"#,
        )];
        let none = [("a.cedar", "")];
        let alone = PolicyEngine::from_sources(schema, None, rules).unwrap();
        let metrics = Metrics::default();
        let tokens = TokenStats::default();
        let text = metrics.render(&tokens, &alone, None, None);
        assert!(!text.contains("shadow"), "{text}");

        let shadowed = PolicyEngine::from_sources(schema, None, rules)
            .unwrap()
            .with_shadow(PolicyEngine::from_sources(schema, None, none).unwrap());
        let p = idguard::Principal::from_unvalidated_claims(
            &serde_json::json!({"tid": "t", "oid": "o", "scp": "s"}),
        )
        .unwrap();
        let item = idguard::policy::Item::Tool(idguard::policy::ToolInfo::new("a\"b"));
        assert!(
            shadowed
                .decide(&p, &item, idguard::policy::Phase::Call, None)
                .is_allow()
        );
        let text = metrics.render(&tokens, &shadowed, None, None);
        assert!(
            text.contains("idguard_policy_shadow_disagreements_total{phase=\"call\",direction=\"enforced_allow_shadow_deny\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("idguard_policy_shadow_item_disagreements_total{action=\"call_tool\",item=\"a\\\"b\",direction=\"enforced_allow_shadow_deny\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("idguard_policy_shadow_compared_total{phase=\"call\"} 1"),
            "{text}"
        );
    }
}
