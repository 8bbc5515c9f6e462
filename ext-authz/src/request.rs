//! The parts of Envoy's `CheckRequest` (`envoy.service.auth.v3`) that EdgeMesh reads, and nothing else.
//! The messages below carry Envoy's field numbers for those fields only; decoding skips every other
//! field (the destination, metadata, TLS session, timestamps and the rest of the HTTP request), so a
//! Check does not allocate what it never looks at. The peer certificate and the request headers stay
//! slices of the received buffer (no copy); a header value that is not UTF-8 is treated as absent.

use bytes::Bytes;
use prost::Message;

/// `envoy.service.auth.v3.CheckRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext`.
#[derive(Clone, PartialEq, Message)]
struct AttributeContext {
    #[prost(message, optional, tag = "1")]
    source: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    request: Option<Request>,
    /// A `map<string, string>` on the wire: repeated key/value entries.
    #[prost(message, repeated, tag = "10")]
    context_extensions: Vec<StringEntry>,
}

/// `AttributeContext.Peer`.
#[derive(Clone, PartialEq, Message)]
struct Peer {
    #[prost(message, optional, tag = "1")]
    address: Option<Address>,
    /// The peer certificate as URL-encoded PEM (with `include_peer_certificate`).
    #[prost(bytes = "bytes", tag = "5")]
    certificate: Bytes,
}

/// `envoy.config.core.v3.Address`; only its `socket_address` case.
#[derive(Clone, PartialEq, Message)]
struct Address {
    #[prost(message, optional, tag = "1")]
    socket_address: Option<SocketAddress>,
}

/// `envoy.config.core.v3.SocketAddress`.
#[derive(Clone, PartialEq, Message)]
struct SocketAddress {
    #[prost(string, tag = "2")]
    address: String,
    #[prost(uint32, optional, tag = "3")]
    port_value: Option<u32>,
}

/// `AttributeContext.Request`.
#[derive(Clone, PartialEq, Message)]
struct Request {
    #[prost(message, optional, tag = "2")]
    http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct HttpRequest {
    #[prost(string, tag = "2")]
    pub method: String,
    /// A `map<string, string>` on the wire, names in lower case.
    #[prost(message, repeated, tag = "3")]
    headers: Vec<BytesEntry>,
    #[prost(string, tag = "4")]
    pub path: String,
    #[prost(string, tag = "5")]
    pub host: String,
}

/// One entry of a `map<string, string>`.
#[derive(Clone, PartialEq, Message)]
struct StringEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

/// One entry of a `map<string, string>`, kept as the received bytes.
#[derive(Clone, PartialEq, Message)]
struct BytesEntry {
    #[prost(bytes = "bytes", tag = "1")]
    key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
}

impl CheckRequest {
    /// The peer certificate Envoy verified, URL-encoded PEM; empty when there was none.
    pub fn certificate(&self) -> &[u8] {
        self.attributes
            .as_ref()
            .and_then(|a| a.source.as_ref())
            .map_or(&[], |s| &s.certificate)
    }

    /// The route's `service` context extension.
    pub fn service(&self) -> Option<&str> {
        self.context_extension("service")
    }

    /// Whether the route asks for a shadow decision too (the context extension `shadow: "true"`).
    pub fn shadow(&self) -> bool {
        self.context_extension("shadow") == Some("true")
    }

    /// A context extension of the route (set in Envoy's configuration; a client cannot send one).
    fn context_extension(&self, key: &str) -> Option<&str> {
        self.attributes
            .as_ref()?
            .context_extensions
            .iter()
            .rev()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    }

    pub fn http(&self) -> Option<&HttpRequest> {
        self.attributes.as_ref()?.request.as_ref()?.http.as_ref()
    }

    /// The client's address as Envoy saw it (`ip:port`).
    pub fn peer_address(&self) -> Option<String> {
        let socket = self
            .attributes
            .as_ref()?
            .source
            .as_ref()?
            .address
            .as_ref()?
            .socket_address
            .as_ref()?;
        Some(match socket.port_value {
            Some(port) => format!("{}:{port}", socket.address),
            None => socket.address.clone(),
        })
    }
}

impl HttpRequest {
    /// A request header by its lower-case name (a map on the wire: the last entry wins).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|e| e.key == name.as_bytes())
            .and_then(|e| std::str::from_utf8(&e.value).ok())
    }

    /// The names of the request headers.
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter_map(|e| std::str::from_utf8(&e.key).ok())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::service::auth::v3 as envoy;

    use super::*;

    fn full_request() -> envoy::CheckRequest {
        use envoy::attribute_context;
        let socket = |ip: &str, port: u32| core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                address: ip.to_owned(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        };
        envoy::CheckRequest {
            attributes: Some(envoy::AttributeContext {
                source: Some(attribute_context::Peer {
                    address: Some(socket("127.0.0.1", 40001)),
                    principal: "spiffe://edgemesh.local/device/pi-1".to_owned(),
                    certificate: "-----BEGIN%20CERTIFICATE-----".to_owned(),
                    ..Default::default()
                }),
                destination: Some(attribute_context::Peer {
                    address: Some(socket("127.0.0.1", 10000)),
                    certificate: "the server's".to_owned(),
                    ..Default::default()
                }),
                request: Some(attribute_context::Request {
                    time: Some(Default::default()),
                    http: Some(attribute_context::HttpRequest {
                        id: "42".to_owned(),
                        method: "POST".to_owned(),
                        headers: HashMap::from([
                            ("user-agent".to_owned(), "curl/8.5.0".to_owned()),
                            ("x-edgemesh-role".to_owned(), "admin".to_owned()),
                        ]),
                        path: "/api/orders?x=1".to_owned(),
                        host: "edgemesh.local".to_owned(),
                        scheme: "https".to_owned(),
                        protocol: "HTTP/2".to_owned(),
                        size: 12,
                        body: "ignored".to_owned(),
                        ..Default::default()
                    }),
                }),
                context_extensions: HashMap::from([
                    ("service".to_owned(), "api".to_owned()),
                    ("team".to_owned(), "edge".to_owned()),
                ]),
                metadata_context: Some(core::Metadata::default()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_fields_edgemesh_reads_decode_from_what_envoy_sends() {
        let request =
            CheckRequest::decode(Bytes::from(full_request().encode_to_vec())).expect("decodes");
        assert_eq!(request.certificate(), b"-----BEGIN%20CERTIFICATE-----");
        assert_eq!(request.service(), Some("api"));
        assert!(!request.shadow(), "no shadow extension");
        let mut shadowed = full_request();
        if let Some(attributes) = shadowed.attributes.as_mut() {
            attributes
                .context_extensions
                .insert("shadow".to_owned(), "true".to_owned());
        }
        let shadowed =
            CheckRequest::decode(Bytes::from(shadowed.encode_to_vec())).expect("decodes");
        assert!(shadowed.shadow());
        assert_eq!(request.peer_address().as_deref(), Some("127.0.0.1:40001"));
        let http = request.http().expect("http attributes");
        assert_eq!(
            (http.method.as_str(), http.path.as_str(), http.host.as_str()),
            ("POST", "/api/orders?x=1", "edgemesh.local")
        );
        assert_eq!(http.header("user-agent"), Some("curl/8.5.0"));
        assert_eq!(http.header("x-edgemesh-role"), Some("admin"));
        assert_eq!(http.header("content-type"), None);
        let mut names: Vec<_> = http.header_names().collect();
        names.sort_unstable();
        assert_eq!(names, ["user-agent", "x-edgemesh-role"]);
    }

    #[test]
    fn a_request_without_attributes_has_no_identity() {
        let request = CheckRequest::decode(Bytes::new()).expect("an empty message decodes");
        assert!(request.certificate().is_empty());
        assert_eq!(request.service(), None);
        assert!(request.http().is_none());
        assert_eq!(request.peer_address(), None);
    }

    #[test]
    fn a_header_value_that_is_not_utf8_is_absent() {
        let http = HttpRequest {
            headers: vec![BytesEntry {
                key: Bytes::from_static(b"user-agent"),
                value: Bytes::from_static(b"\xff\xfe"),
            }],
            ..Default::default()
        };
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request { http: Some(http) }),
                ..Default::default()
            }),
        };
        let decoded = CheckRequest::decode(Bytes::from(request.encode_to_vec())).expect("decodes");
        let http = decoded.http().expect("http attributes");
        assert_eq!(http.header("user-agent"), None);
        assert_eq!(http.header_names().collect::<Vec<_>>(), ["user-agent"]);
    }
}
