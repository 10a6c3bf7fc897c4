//! Configuration: the file's serde model (`model`) and its validated, typed form (`load`).

mod load;
pub(crate) mod model;

pub use load::{Config, ConfigError, ForwardConfig, ListConfig, ServerConfig, load, parse};
pub use model::{
    BlockAction, BlockingSection, CacheSection, ListKind, ListMode, LogFormat, LogSection,
    ReloadSection,
};
