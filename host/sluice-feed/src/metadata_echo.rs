//! Echoes request metadata into response headers and trailers, for every method.
//!
//! tonic lets a handler set response headers but not the trailers of a successful response, and
//! the echo has to cover all four methods and failures alike. Wrapping the generated service at
//! the HTTP level does both in one place: headers are added to the response, and the trailer is
//! added to the body's final trailers frame (or to the headers of a trailers-only response).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body::{Frame, SizeHint};
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::server::NamedService;

use crate::{FeedError, headers};

const FEED_NAME: HeaderName = HeaderName::from_static(headers::FEED_NAME);
const ECHO_TRAILER: HeaderName = HeaderName::from_static(headers::ECHO_TRAILER);
const TRAILER_ECHO: HeaderName = HeaderName::from_static(headers::TRAILER_ECHO);
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The generated gRPC service plus the metadata echo.
#[derive(Debug, Clone)]
pub(crate) struct MetadataEcho<S> {
    inner: S,
    name: HeaderValue,
}

impl<S> MetadataEcho<S> {
    pub(crate) fn new(inner: S, name: &str) -> Result<Self, FeedError> {
        let name = HeaderValue::from_str(name).map_err(|_| {
            FeedError::InvalidConfig(format!("name {name:?} is not a header value"))
        })?;
        Ok(MetadataEcho { inner, name })
    }
}

impl<S: NamedService> NamedService for MetadataEcho<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for MetadataEcho<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let echoed: Vec<(HeaderName, HeaderValue)> = req
            .headers()
            .iter()
            .filter(|(name, _)| name.as_str().starts_with(headers::ECHO_PREFIX))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let trailer = req.headers().get(&ECHO_TRAILER).cloned();
        let name = self.name.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let mut response = response.await?;
            let response_headers = response.headers_mut();
            response_headers.insert(FEED_NAME, name);
            for (name, value) in echoed {
                response_headers.append(name, value);
            }
            let Some(trailer) = trailer else {
                return Ok(response);
            };
            // A status already in the headers means a trailers-only response: there will be no
            // trailers frame, and the header block plays its part.
            if response.headers().contains_key(&GRPC_STATUS) {
                response.headers_mut().insert(TRAILER_ECHO, trailer);
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(TrailerInject {
                    inner: body,
                    value: Some(trailer),
                })
            }))
        })
    }
}

/// A response body that adds `x-trailer-echo` to its trailers frame.
struct TrailerInject {
    inner: Body,
    value: Option<HeaderValue>,
}

impl http_body::Body for TrailerInject {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(trailers) = frame.trailers_mut()
                    && let Some(value) = this.value.take()
                {
                    trailers.insert(TRAILER_ECHO, value);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
