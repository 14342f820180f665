//! Connection URLs made safe to log and show: passwords become `***`.

/// `url` with any password replaced by `***`, safe to log.
///
/// Meant for connection URLs written by hand, which are often not valid URLs: a password
/// may hold `/`, `@`, `:`, `?` or `#` unescaped. So the user information is everything up
/// to the *last* `@` (a host never contains one), and the user is what precedes its first
/// `:`. When that user part holds a `/`, `?` or `#`, the `@` may sit in a path or query and
/// nothing can be told apart: everything before it is hidden. `password=` style query
/// parameters (`password`, `pass`, `pwd`, `sslpassword`) are hidden too. Without `://` the
/// whole string is treated the same way (`user:pw@host` → `user:***@host`).
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let (userinfo, host_and_path) = match rest.rsplit_once('@') {
        Some((userinfo, after)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let shown = if user.contains(['/', '?', '#']) {
                "***@".to_owned()
            } else {
                format!("{user}:***@")
            };
            (shown, after)
        }
        None => (String::new(), rest),
    };
    format!("{scheme}{userinfo}{}", redact_query(host_and_path))
}

/// `rest` (host, path, query, fragment) with password-like query values replaced by `***`.
fn redact_query(rest: &str) -> String {
    let Some((before, query)) = rest.split_once('?') else {
        return rest.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _))
                if ["password", "pass", "pwd", "sslpassword"]
                    .iter()
                    .any(|secret| key.eq_ignore_ascii_case(secret)) =>
            {
                format!("{key}=***")
            }
            _ => param.to_owned(),
        })
        .collect();
    let mut out = format!("{before}?{}", params.join("&"));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// A comma-separated list of URLs with every password replaced by `***`, safe to log.
pub fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|url| redact_url(url.trim()))
        .collect::<Vec<_>>()
        .join(",")
}
