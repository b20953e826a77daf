//! The trace context of a request's hop, shared by the layers that write it (trace
//! propagation, `mesh-telemetry`'s `TraceLayer`) and those that read it (access logs,
//! metrics, spans, in-process forwarding).
//!
//! It travels in the request's [`RequestSlots`](crate::ext::RequestSlots) (one extension
//! for every layer's per-request values), read through [`trace_context`](crate::ext::trace_context).

/// The trace context of this hop: the trace, the proxy's span, and the caller's span.
///
/// Written by `mesh-telemetry`'s `TraceLayer` into the request's
/// [`RequestSlots::trace`](crate::ext::RequestSlots::trace); read by access logs, metrics and
/// span exporters through [`trace_context`](crate::ext::trace_context) (which also finds one
/// inserted on its own as an extension).
///
/// ```
/// use mesh_core::ext::{slots_mut, trace_context};
/// use mesh_core::trace::TraceContext;
///
/// let mut req = http::Request::new(());
/// let ctx = TraceContext { trace_id: 0xab, span_id: 7, parent_span_id: None, sampled: true };
/// slots_mut(req.extensions_mut()).trace = Some(ctx);
/// assert_eq!(trace_context(req.extensions()).map(|c| c.trace_id_hex()),
///            Some("000000000000000000000000000000ab".to_string()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id (never zero).
    pub trace_id: u128,
    /// This hop's span id (never zero).
    pub span_id: u64,
    /// The caller's span id, when the request carried a context.
    pub parent_span_id: Option<u64>,
    /// Whether the trace is sampled.
    pub sampled: bool,
}

impl TraceContext {
    /// The trace id as 32 lowercase hex digits (for logs).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}
