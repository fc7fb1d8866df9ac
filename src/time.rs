//! Times as scp-pep's interfaces accept them (CLI flags, REST bodies, import files).

/// Parses an instant: RFC 3339, or a `YYYY-MM-DD` date (midnight UTC). Output: Unix time, ms.
///
/// Errors: a message naming the input when it is neither.
pub fn parse_instant(s: &str) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc().timestamp_millis());
    }
    Err(format!(
        "`{s}` is neither an RFC 3339 time nor a YYYY-MM-DD date"
    ))
}
