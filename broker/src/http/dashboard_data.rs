//! A [`MetricsSnapshot`] as the JSON the dashboard polls (`/api/dashboard`). Rates (plans per
//! second, latency over the last second) are the page's to compute from two polls: the
//! broker keeps no history for it.

use serde_json::{json, Map, Value as Json};

use crate::engine::metrics::Histogram;
use crate::engine::MetricsSnapshot;

fn histogram(h: &Histogram) -> Json {
    let buckets: Vec<Json> = h
        .cumulative_seconds()
        .into_iter()
        .map(|(le, n)| {
            json!([
                if le.is_finite() {
                    json!(le)
                } else {
                    json!("+Inf")
                },
                n
            ])
        })
        .collect();
    json!({
        "count": h.count,
        "sum_seconds": h.sum_us as f64 / 1e6,
        "p50_seconds": h.quantile_seconds(0.5),
        "p95_seconds": h.quantile_seconds(0.95),
        "p99_seconds": h.quantile_seconds(0.99),
        "buckets": buckets,
    })
}

/// The dashboard's data.
pub fn to_json(s: &MetricsSnapshot) -> Json {
    let counters: Map<String, Json> = s
        .counters
        .iter()
        .map(|(name, _, v)| (name.to_string(), json!(v)))
        .collect();
    let gauges: Map<String, Json> = s
        .gauges
        .iter()
        .map(|(name, _, v)| (name.to_string(), json!(v)))
        .collect();
    let latency: Map<String, Json> = s
        .histograms
        .iter()
        .map(|(name, _, h)| (name.to_string(), histogram(h)))
        .collect();
    let by_code = |rows: &[(u16, String, u64)]| -> Vec<Json> {
        rows.iter()
            .map(|(code, kind, n)| json!({"code": code, "kind": kind, "count": n}))
            .collect()
    };
    let [published, delivered, dropped] = s.topics;
    json!({
        "broker": s.broker,
        "version": s.version,
        "cluster": s.cluster,
        "uptime_seconds": s.uptime.as_secs_f64(),
        "shutting_down": s.shutting_down,
        "counters": counters,
        "gauges": gauges,
        "latency": latency,
        "errors": by_code(&s.errors),
        "plans_failed": by_code(&s.plans_failed),
        "topics": {
            "published": published,
            "delivered": delivered,
            "dropped": dropped,
            "subscriptions": s.gauges.iter().find(|g| g.0 == "subscriptions").map_or(0, |g| g.2),
        },
        "cache": {
            "enabled": !s.cache_counters.is_empty(),
            "counters": s.cache_counters.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<_, _>>(),
            "gauges": s.cache_gauges.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<_, _>>(),
        },
        "workers": s.workers.iter().map(|(id, w)| json!({
            "id": id,
            "name": w.name,
            "functions": w.functions,
            "resources": w.resources,
            "capacity": w.capacity,
            "outstanding": w.outstanding,
            "draining": w.draining,
        })).collect::<Vec<_>>(),
        "members": s.members.iter().map(|m| json!({
            "name": m.name,
            "state": m.state,
            "client": m.client,
            "functions": m.functions,
            "me": m.me,
        })).collect::<Vec<_>>(),
        "functions": s.functions,
    })
}
