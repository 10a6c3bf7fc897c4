//! Getting answers for allowed questions: forwarding to upstreams (recursion comes later).

pub mod recursor;
pub mod upstream;

pub use recursor::{ForwardZone, RecursionError, RecursionSettings, RecursiveAnswer, Recursor};
pub use upstream::{UpstreamError, UpstreamQuery, Upstreams};
