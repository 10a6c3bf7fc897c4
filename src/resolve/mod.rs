//! Getting answers for allowed questions: forwarding to upstreams (recursion comes later).

pub mod upstream;

pub use upstream::{UpstreamError, UpstreamQuery, Upstreams};
