//! `sipwarden import-fail2ban DIR`: a fail2ban configuration as sipwarden
//! TOML.

use std::path::Path;
use std::process::ExitCode;

use super::{CliError, out};
use crate::config::fail2ban;

/// Prints the sipwarden TOML equivalent of the fail2ban configuration in
/// `dir`.
pub fn import_fail2ban(dir: &Path) -> Result<ExitCode, CliError> {
    let c = fail2ban::from_fail2ban(dir).map_err(CliError::Load)?;
    out(&fail2ban::to_toml(&c))?;
    Ok(ExitCode::SUCCESS)
}
