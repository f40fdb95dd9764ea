//! gRPC status codes and the trailers that carry them.

use std::fmt;

use http::{HeaderMap, HeaderValue, Response, StatusCode};

/// The gRPC status codes Sluice produces itself. Upstream statuses pass through untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Code {
    /// The call was cancelled, typically by the caller.
    Cancelled = 1,
    /// Unknown error.
    Unknown = 2,
    /// The client sent something that is not a valid call.
    InvalidArgument = 3,
    /// The deadline expired before the call completed.
    DeadlineExceeded = 4,
    /// The caller may not make this call.
    PermissionDenied = 7,
    /// A limit was reached: queue full, message too large, or a lagging monitor.
    ResourceExhausted = 8,
    /// The method is not supported by the proxy.
    Unimplemented = 12,
    /// A proxy-internal failure.
    Internal = 13,
    /// No upstream could serve the call right now; retrying may succeed.
    Unavailable = 14,
    /// Data was lost: a subscription could not be resumed where it was (a gap).
    DataLoss = 15,
    /// The caller's identity was not accepted.
    Unauthenticated = 16,
}

impl Code {
    /// The numeric code as it appears in `grpc-status`.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    fn header_value(self) -> HeaderValue {
        HeaderValue::from(self.as_u8() as u16)
    }
}

/// A status produced by the proxy: a code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    /// The gRPC code.
    pub code: Code,
    /// Why, for the monitor's logs.
    pub message: String,
}

impl Status {
    /// A status with a code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `UNAVAILABLE`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    /// `RESOURCE_EXHAUSTED`.
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Self::new(Code::ResourceExhausted, message)
    }

    /// `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// The trailers that end a stream with this status.
    pub fn to_trailers(&self) -> HeaderMap {
        let mut trailers = HeaderMap::with_capacity(2);
        trailers.insert("grpc-status", self.code.header_value());
        if !self.message.is_empty()
            && let Ok(value) = HeaderValue::from_str(&percent_encode(&self.message))
        {
            trailers.insert("grpc-message", value);
        }
        trailers
    }

    /// A trailers-only response: headers that both start and end the stream.
    pub fn to_response(&self) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.extend(self.to_trailers());
        response
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 spec requires (bytes outside 0x20..0x7e
/// and `%` itself).
pub(crate) fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_carry_code_and_encoded_message() {
        let status = Status::resource_exhausted("lagging 100% é");
        let trailers = status.to_trailers();
        assert_eq!(trailers["grpc-status"], "8");
        assert_eq!(trailers["grpc-message"], "lagging 100%25 %C3%A9");
    }

    #[test]
    fn trailers_only_response_is_grpc() {
        let response = Status::unavailable("down").to_response();
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()["grpc-status"], "14");
    }
}
