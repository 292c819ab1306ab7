//! The template catalog: built-in templates embedded in the binary, overridable by a directory
//! laid out like the original store (`<module>/<version>/{dependencies/,extras/,*.yaml|*.yml}`).
//!
//! A version folder is **native** when it has `placeholders.yaml` (handlebars files, typed
//! placeholders, optional `local.yaml` recipe) and **legacy** otherwise (the original's
//! `$g{}`/`$a{}`/`$d{}` placeholders, rendered by [`legacy`]).

pub mod legacy;
pub mod outputs;
pub mod placeholders;
pub mod quantity;
pub mod render;
pub mod requirements;
pub mod store;
mod version;

pub use placeholders::{Report, Resolved, Spec, Type};
pub use store::Catalog;
pub use version::{Format, Rendered, RenderedFile, TemplateVersion};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field} `{value}`: use only lowercase letters, digits, '.', '_' and '-' (not '.' or '..')")]
    InvalidName { field: &'static str, value: String },
    #[error("unknown module `{module}`; valid modules: {}", .valid.join(", "))]
    ModuleNotFound { module: String, valid: Vec<String> },
    #[error("module `{module}` has no version `{version}`; valid versions: {}", .valid.join(", "))]
    VersionNotFound { module: String, version: String, valid: Vec<String> },
    #[error("unknown placeholder `{name}`; valid placeholders: {}", .valid.join(", "))]
    UnknownPlaceholder { name: String, valid: Vec<String> },
    #[error("placeholder `{name}` expects {expected}, got {got}")]
    WrongType { name: String, expected: &'static str, got: &'static str },
    #[error("placeholder `{name}`: {reason}")]
    InvalidValue { name: String, reason: String },
    #[error("template {origin} is invalid: {message}")]
    BadTemplate { origin: String, message: String },
    #[error("rendering {file} failed: {message}")]
    Render { file: String, message: String },
    #[error("rendered {file} is not valid YAML: {message}")]
    BadYaml { file: String, message: String },
    #[error("reading templates failed: {0}")]
    Io(String),
}

impl Error {
    /// The request field an error is about, for machine-readable error details.
    pub fn field(&self) -> Option<String> {
        match self {
            Error::InvalidName { field, .. } => Some((*field).to_string()),
            Error::ModuleNotFound { .. } => Some("module".into()),
            Error::VersionNotFound { .. } => Some("version".into()),
            Error::UnknownPlaceholder { name, .. }
            | Error::WrongType { name, .. }
            | Error::InvalidValue { name, .. } => Some(format!("config.{name}")),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Module and version names: [`crate::identity::is_template_name`] (they become path segments).
pub fn validate_name(field: &'static str, value: &str) -> Result<()> {
    if crate::identity::is_template_name(value) {
        Ok(())
    } else {
        Err(Error::InvalidName { field, value: value.to_string() })
    }
}
