//! SSRF guard: which webhook targets the hub may call.
//!
//! A URL naming a host is checked where the connection is made: the HTTP
//! client resolves names through [`GuardedResolver`], which refuses the whole
//! answer if any address is loopback, private, link-local, CGNAT or
//! unspecified. The client connects only to the addresses that resolver
//! vetted, so a DNS answer that changes between a check and the connection
//! (rebinding) cannot slip through. IP literals never reach a resolver, so
//! [`check_url`] vets them before each request.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::WebhookError;
use crate::hub::is_public_ip;

/// Validates a webhook URL for one attempt: http(s), a host, and (unless
/// `allow_private`) no literal non-public address.
pub fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, WebhookError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| WebhookError::InvalidUrl(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(WebhookError::InvalidUrl(
            "the scheme must be http or https".into(),
        ));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| WebhookError::InvalidUrl("the URL has no host".into()))?;
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(addr) = literal.parse::<IpAddr>() {
        vet(host, &[SocketAddr::new(addr, 0)], allow_private)?;
    }
    Ok(parsed)
}

/// Refuses a resolution result that is empty or, unless `allow_private`,
/// holds any non-public address.
fn vet(host: &str, addrs: &[SocketAddr], allow_private: bool) -> Result<(), WebhookError> {
    if addrs.is_empty() {
        return Err(WebhookError::Resolve {
            host: host.to_string(),
            reason: "no addresses".into(),
        });
    }
    if !allow_private && let Some(bad) = addrs.iter().find(|a| !is_public_ip(a.ip())) {
        return Err(WebhookError::RefusedAddress {
            host: host.to_string(),
            addr: bad.ip(),
        });
    }
    Ok(())
}

/// DNS resolver of the webhook client: the system resolver, then the SSRF check.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| WebhookError::Resolve {
                    host: host.clone(),
                    reason: e.to_string(),
                })?
                .collect();
            vet(&host, &addrs, allow_private)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client for webhook attempts: guarded resolution, redirects
/// returned as responses (and so counted as failures), no proxy (a proxy
/// would resolve the name itself, past the guard), and `timeout` per request.
pub fn http_client(allow_private: bool, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(GuardedResolver { allow_private })
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_with_a_host() {
        assert!(check_url("https://example.com/hook", false).is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "not a url",
            "http://",
        ] {
            assert!(
                matches!(check_url(bad, true), Err(WebhookError::InvalidUrl(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn literal_private_addresses_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:8080/",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert!(
                matches!(
                    check_url(url, false),
                    Err(WebhookError::RefusedAddress { .. })
                ),
                "{url}"
            );
            assert!(check_url(url, true).is_ok(), "{url}");
        }
        assert!(check_url("http://8.8.8.8/", false).is_ok());
    }

    #[tokio::test]
    async fn resolver_refuses_names_that_resolve_to_loopback() {
        let guarded = GuardedResolver {
            allow_private: false,
        };
        let error = guarded
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost must be refused");
        let error = error.downcast_ref::<WebhookError>().unwrap();
        assert!(
            matches!(error, WebhookError::RefusedAddress { .. }),
            "{error}"
        );

        let open = GuardedResolver {
            allow_private: true,
        };
        let addrs: Vec<SocketAddr> = open
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
