//! UPnP Internet Gateway Device (v1 and v2) codecs, client and server side: SSDP discovery,
//! HTTP/1.1 framing, the device description and SOAP control. Sans-IO: every function takes
//! or returns bytes; the driver owns the sockets.

pub mod description;
pub mod http;
pub mod soap;
pub mod ssdp;
pub mod url;
mod xml;

pub use description::{DeviceDescription, ServiceKind, WanService};
pub use http::HttpResponse;
pub use soap::{Action, ActionResponse, PortMappingRequest};
pub use url::HttpUrl;

/// Why a UPnP message could not be used.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum UpnpError {
    /// A malformed SSDP datagram.
    #[error("malformed SSDP datagram: {0}")]
    Ssdp(&'static str),
    /// A malformed HTTP message.
    #[error("malformed HTTP message: {0}")]
    Http(String),
    /// A non-2xx HTTP answer that carried no SOAP fault.
    #[error("HTTP status {0}")]
    Status(u16),
    /// Malformed or unexpected XML.
    #[error("bad XML: {0}")]
    Xml(String),
    /// The description lists no WANIPConnection:1/2 or WANPPPConnection:1 service.
    #[error("no WANIPConnection or WANPPPConnection service in the device description")]
    NoWanService,
    /// A URL we cannot use (not http://, or a host name instead of an IP literal).
    #[error("unusable URL: {0}")]
    Url(String),
    /// The gateway answered with a SOAP UPnPError.
    #[error("UPnP error {code}: {description}")]
    Fault {
        /// The UPnP error code (see [`soap::error_code`]).
        code: u16,
        /// The gateway's description of it.
        description: String,
    },
    /// A required element or header is absent.
    #[error("missing {0}")]
    Missing(&'static str),
    /// The message is over the size caps.
    #[error("message too large")]
    TooLarge,
}
