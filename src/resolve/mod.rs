//! Getting answers for allowed questions: forwarding to upstreams, or recursion from the root.

pub mod inflight;
mod nsec;
pub mod prefetch;
pub mod recursor;
mod scrub;
pub mod servers;
pub mod upstream;

pub use recursor::{ForwardZone, RecursionError, RecursionSettings, RecursiveAnswer, Recursor};
pub use upstream::{ForwardZones, UpstreamError, UpstreamQuery, Upstreams};
