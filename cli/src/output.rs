//! What the commands print: JSON pretty-printed, lines, and text cells.

use std::io::Write;

use serde_json::Value;

use crate::client::CliError;

/// A JSON string's text (empty for anything else).
pub(crate) fn text(value: &Value) -> String {
    value.as_str().unwrap_or("").to_owned()
}

/// `value` pretty-printed, one line per field.
pub(crate) fn print_json(out: &mut dyn Write, value: &Value) -> Result<(), CliError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| CliError::Unexpected(e.to_string()))?;
    write_line(out, &text)
}

/// One line of output; a closed or full output is an error, not a panic.
pub(crate) fn write_line(out: &mut dyn Write, line: &str) -> Result<(), CliError> {
    writeln!(out, "{line}").map_err(|e| CliError::Unexpected(format!("cannot write: {e}")))
}
