//! One `grpc.health.v1.Health/Check` call over an HTTP/2 connection.
//!
//! The two messages involved have one field each, so they are encoded by hand rather than
//! pulling a protobuf code generator into the data plane.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Request, Uri};

const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// Why a check did not pass.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckError {
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The HTTP/2 exchange failed.
    #[error("{0}")]
    Http2(#[from] h2::Error),
    /// The server answered with a gRPC error.
    #[error("health check failed with grpc-status {code}: {message}")]
    Status {
        /// The gRPC status code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The server answered but is not serving.
    #[error("server reports status {0} (not SERVING)")]
    NotServing(u64),
    /// The answer could not be decoded.
    #[error("malformed health check answer: {0}")]
    Malformed(&'static str),
}

/// Where a check goes: what its request needs to know of the endpoint. The pool lends it from
/// its endpoint, so that this module need not know the pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckTarget<'a> {
    /// `http` or `https`, for the `:scheme` pseudo-header.
    pub scheme: &'a Scheme,
    /// `host:port`, for the `:authority` pseudo-header.
    pub authority: &'a Authority,
    /// Metadata the endpoint wants on every request (credentials, routing keys).
    pub metadata: &'a [(HeaderName, HeaderValue)],
}

/// Asks `target` over `send_request` whether `service` is serving.
pub(crate) async fn check(
    send_request: h2::client::SendRequest<Bytes>,
    target: CheckTarget<'_>,
    service: &str,
    timeout: Duration,
) -> Result<(), CheckError> {
    tokio::time::timeout(timeout, check_inner(send_request, target, service))
        .await
        .map_err(|_| CheckError::Timeout(timeout))?
}

async fn check_inner(
    send_request: h2::client::SendRequest<Bytes>,
    target: CheckTarget<'_>,
    service: &str,
) -> Result<(), CheckError> {
    let uri = Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(CHECK_PATH)
        .build()
        .map_err(|_| CheckError::Malformed("endpoint address is not a valid URI"))?;
    let mut request = Request::post(uri)
        .version(http::Version::HTTP_2)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|_| CheckError::Malformed("cannot build the request"))?;
    for (name, value) in target.metadata {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let mut send_request = send_request.ready().await?;
    let (response, mut send) = send_request.send_request(request, false)?;
    send.send_data(encode_request(service), true)?;
    let response = response.await?;
    let (parts, mut body) = response.into_parts();
    if let Some(code) = parts.headers.get("grpc-status") {
        // Trailers-only answer: an error.
        return Err(status_error(code, parts.headers.get("grpc-message")));
    }
    let mut message = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        message.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    match trailers.get("grpc-status") {
        Some(code) if code.as_bytes() != b"0" => {
            return Err(status_error(code, trailers.get("grpc-message")));
        }
        _ => {}
    }
    match decode_status(&message)? {
        SERVING => Ok(()),
        other => Err(CheckError::NotServing(other)),
    }
}

fn status_error(code: &http::HeaderValue, message: Option<&http::HeaderValue>) -> CheckError {
    CheckError::Status {
        code: String::from_utf8_lossy(code.as_bytes()).into_owned(),
        message: message
            .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
            .unwrap_or_default(),
    }
}

/// A framed `HealthCheckRequest { service = 1 }`.
fn encode_request(service: &str) -> Bytes {
    let mut payload = BytesMut::new();
    if !service.is_empty() {
        payload.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut payload, service.len() as u64);
        payload.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + payload.len());
    framed.put_u8(0);
    framed.put_u32(payload.len() as u32);
    framed.put_slice(&payload);
    framed.freeze()
}

/// The `status` (field 1) of a framed `HealthCheckResponse`; absent means 0 (UNKNOWN).
fn decode_status(framed: &[u8]) -> Result<u64, CheckError> {
    if framed.len() < 5 {
        return Err(CheckError::Malformed("no response message"));
    }
    if framed[0] != 0 {
        return Err(CheckError::Malformed("compressed response"));
    }
    let mut payload = &framed[5..];
    let mut status = 0;
    while !payload.is_empty() {
        let key = take_varint(&mut payload)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = take_varint(&mut payload)?,
            (_, 0) => {
                take_varint(&mut payload)?;
            }
            (_, 2) => {
                let len = take_varint(&mut payload)? as usize;
                if len > payload.len() {
                    return Err(CheckError::Malformed("truncated field"));
                }
                payload = &payload[len..];
            }
            _ => return Err(CheckError::Malformed("unexpected wire type")),
        }
    }
    Ok(status)
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

fn take_varint(input: &mut &[u8]) -> Result<u64, CheckError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input
            .split_first()
            .ok_or(CheckError::Malformed("truncated varint"))?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(CheckError::Malformed("varint too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_response_wire_format() {
        assert_eq!(&encode_request("")[..], &[0, 0, 0, 0, 0]);
        let framed = encode_request("a.B");
        assert_eq!(&framed[..], &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']);
        assert_eq!(decode_status(&[0, 0, 0, 0, 2, 0x08, 1]).ok(), Some(1));
        assert_eq!(decode_status(&[0, 0, 0, 0, 0]).ok(), Some(0));
        assert!(decode_status(&[0, 0, 0, 0, 2, 0x08]).is_err());
        assert!(decode_status(&[1, 0, 0, 0, 0]).is_err());
    }
}
