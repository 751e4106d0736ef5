//! Measurements of calls through the `metrics` facade (the server installs a Prometheus
//! exporter and serves `/metrics`; without one these calls cost a branch). Names and units:
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `voxgate_calls_total` | counter | `transport`, `user` | calls started |
//! | `voxgate_calls_active` | gauge | `transport`, `user` | calls running now |
//! | `voxgate_call_setups_total` | counter | `transport`, `result` | `answered`, or the hang-up reason of a call that never was |
//! | `voxgate_hangups_total` | counter | `transport`, `reason`, `initiator` | calls ended |
//! | `voxgate_speaking_delay_seconds` | histogram | `transport` | speech onset → `speaking` event |
//! | `voxgate_asr_final_delay_seconds` | histogram | `transport` | end of the utterance → `asrFinal` |
//! | `voxgate_tts_first_audio_seconds` | histogram | `engine` | `tts`/`play` request → its first audio |
//! | `voxgate_rtp_loss_ratio` | histogram | | a SIP leg's lost / expected packets (0..1) |
//! | `voxgate_rtp_jitter_seconds` | histogram | | a SIP leg's RFC 3550 interarrival jitter |
//! | `voxgate_rtp_foreign_packets_total` | counter | | RTP from a third address, dropped |
//! | `voxgate_audio_frames_dropped_total` | counter | `queue` | 20 ms frames dropped (`leg`: the leg was full) |
//! | `voxgate_subscribers_dropped_total` | counter | | controllers dropped for not reading their events |

use crate::vocab::{CallEvent, EventKind};

/// One call's measurements; the active gauge goes down when it is dropped.
pub(crate) struct CallMetrics {
    transport: &'static str,
    user: String,
    answered: bool,
}

impl CallMetrics {
    pub(crate) fn started(transport: &'static str, user: Option<&str>) -> Self {
        let user = user.unwrap_or("local").to_string();
        metrics::counter!("voxgate_calls_total", "transport" => transport, "user" => user.clone())
            .increment(1);
        metrics::gauge!("voxgate_calls_active", "transport" => transport, "user" => user.clone())
            .increment(1.0);
        CallMetrics {
            transport,
            user,
            answered: false,
        }
    }

    /// A subscriber was dropped for lagging.
    pub(crate) fn subscriber_dropped(&self) {
        metrics::counter!("voxgate_subscribers_dropped_total").increment(1);
    }

    pub(crate) fn event(&mut self, ev: &CallEvent) {
        let t = self.transport;
        let secs = |from: i64| (ev.timestamp - from).max(0) as f64 / 1000.0;
        match &ev.kind {
            EventKind::Answer { .. } => {
                self.answered = true;
                metrics::counter!("voxgate_call_setups_total", "transport" => t, "result" => "answered")
                    .increment(1);
            }
            EventKind::Hangup { reason, initiator } => {
                if !self.answered {
                    metrics::counter!("voxgate_call_setups_total", "transport" => t, "result" => reason.clone())
                        .increment(1);
                }
                metrics::counter!("voxgate_hangups_total", "transport" => t, "reason" => reason.clone(), "initiator" => initiator.clone())
                    .increment(1);
            }
            EventKind::Speaking { start_time, .. } => {
                metrics::histogram!("voxgate_speaking_delay_seconds", "transport" => t)
                    .record(secs(*start_time));
            }
            EventKind::AsrFinal { end_time, .. } => {
                metrics::histogram!("voxgate_asr_final_delay_seconds", "transport" => t)
                    .record(secs(*end_time));
            }
            EventKind::Metrics {
                key,
                duration,
                data,
            } => {
                if let Some(engine) = key.strip_prefix("ttfb.tts.") {
                    metrics::histogram!("voxgate_tts_first_audio_seconds", "engine" => engine.to_string())
                        .record(*duration as f64 / 1000.0);
                } else if key == "rtp" {
                    let f = |k: &str| data.get(k).and_then(serde_json::Value::as_f64);
                    if let Some(l) = f("lossPercent") {
                        metrics::histogram!("voxgate_rtp_loss_ratio").record(l / 100.0);
                    }
                    if let Some(j) = f("jitterMs") {
                        metrics::histogram!("voxgate_rtp_jitter_seconds").record(j / 1000.0);
                    }
                    if let Some(n) = f("foreign").filter(|n| *n > 0.0) {
                        metrics::counter!("voxgate_rtp_foreign_packets_total").increment(n as u64);
                    }
                } else if key == "audio_dropped" {
                    if let Some(n) = data.get("frames").and_then(serde_json::Value::as_u64) {
                        metrics::counter!("voxgate_audio_frames_dropped_total", "queue" => "leg")
                            .increment(n);
                    }
                }
            }
            _ => {}
        }
    }
}

impl Drop for CallMetrics {
    fn drop(&mut self) {
        metrics::gauge!("voxgate_calls_active", "transport" => self.transport, "user" => self.user.clone())
            .decrement(1.0);
    }
}
