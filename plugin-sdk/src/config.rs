//! This plugin's configuration values (from its manifest and the host config; secrets too).

/// The value of `name`, if configured.
pub fn get(name: &str) -> Option<String> {
    crate::__private::bindings::kairos::plugin::config::get(name)
}

/// The value of `name`, or a permanent error naming the missing setting.
pub fn require(name: &str) -> Result<String, crate::TaskError> {
    get(name).ok_or_else(|| {
        crate::TaskError::permanent(format!(
            "missing config value `{name}`: set it in the plugin's manifest or the host config"
        ))
    })
}

/// Every configured name and value.
pub fn all() -> Vec<(String, String)> {
    crate::__private::bindings::kairos::plugin::config::all()
}
