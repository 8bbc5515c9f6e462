//! The gRPC server Envoy talks to. `Check` is answered on a short path straight over hyper's HTTP/2:
//! read the one request message, decide, write the one response message and `grpc-status: 0`. Every
//! other method (the gRPC health service) goes to tonic's generated service. Envoy calls Check for every
//! request it proxies, and on a small machine what the authorizer spends per call comes out of the
//! proxy's share of it (BENCHMARKS.md), so the call skips the general server stack (router, codec,
//! request and response wrappers) it does not need.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use edgemesh_core::serve;
use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::WithTrailers;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::net::TcpListener;
use tonic::codegen::Service;

use crate::check::Authorizer;
use crate::request::CheckRequest;

/// Envoy's authorization service, as the gRPC health service names it.
pub const AUTHORIZATION_SERVICE: &str = "envoy.service.auth.v3.Authorization";
/// Its one method, answered on the short path.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
/// How long calls in flight may take to finish at shutdown.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Largest request message accepted (tonic's default): a CheckRequest with a certificate and headers
/// is a few kilobytes.
const MAX_MESSAGE: usize = 4 << 20;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// A unary gRPC answer: the message (if any) and the trailers with the status.
type Unary = WithTrailers<Full<Bytes>, Ready<Option<Result<HeaderMap, Infallible>>>>;

/// gRPC status codes used here.
#[derive(Debug, Clone, Copy)]
enum Code {
    Ok = 0,
    InvalidArgument = 3,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
}

/// Serves Check (and, through `other`, the rest of gRPC) on `listener` until `shutdown` completes,
/// then lets the calls in flight finish.
pub async fn serve<S>(
    listener: TcpListener,
    authorizer: Arc<Authorizer>,
    other: S,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    // Envoy closes a connection once its calls are answered after the GOAWAY; one that does not is
    // not waited for forever.
    serve::accept_until(listener, shutdown, DRAIN_LIMIT, |stream, _, graceful| {
        let (authorizer, other) = (Arc::clone(&authorizer), other.clone());
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let (authorizer, mut other) = (Arc::clone(&authorizer), other.clone());
            async move {
                if request.uri().path() == CHECK_PATH {
                    Ok::<_, Infallible>(check(&authorizer, request).await.map(Either::Left))
                } else {
                    let response = other.call(request).await?;
                    Ok(response.map(Either::Right))
                }
            }
        });
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "gRPC connection ended with an error");
            }
        });
    })
    .await;
}

/// One Check call: exactly one uncompressed request message in, one response message out.
async fn check(authorizer: &Authorizer, request: Request<Incoming>) -> Response<Unary> {
    let is_grpc = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if request.method() != http::Method::POST || !is_grpc {
        let mut response = unary(None, Code::InvalidArgument, "expected a gRPC POST");
        *response.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return response;
    }
    let body = match Limited::new(request.into_body(), MAX_MESSAGE + 5)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return unary(None, Code::ResourceExhausted, "request message too large");
        }
        Err(e) => {
            tracing::debug!(error = %e, "reading a Check request failed");
            return unary(None, Code::Internal, "the request could not be read");
        }
    };
    let message = match frame(&body) {
        Ok(message) => message,
        Err((code, why)) => return unary(None, code, why),
    };
    let request = match CheckRequest::decode(message) {
        Ok(request) => request,
        Err(_) => {
            return unary(
                None,
                Code::InvalidArgument,
                "the CheckRequest does not decode",
            );
        }
    };
    let answer = authorizer.answer(&request).await;
    let len = answer.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Cannot fail: the buffer was sized for the message.
    let _ = answer.encode(&mut out);
    unary(Some(out.freeze()), Code::Ok, "")
}

/// The message of a body holding exactly one length-prefixed gRPC message.
fn frame(body: &Bytes) -> Result<Bytes, (Code, &'static str)> {
    let Some((&[compressed, a, b, c, d], rest)) = body.split_first_chunk::<5>() else {
        return Err((Code::InvalidArgument, "no request message"));
    };
    if compressed != 0 {
        return Err((Code::Unimplemented, "compressed messages are not supported"));
    }
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if rest.len() != len {
        return Err((
            Code::InvalidArgument,
            "expected exactly one request message",
        ));
    }
    Ok(body.slice(5..))
}

/// A response with `message` (if any) and the status in the trailers.
fn unary(message: Option<Bytes>, code: Code, why: &str) -> Response<Unary> {
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert(
        GRPC_STATUS,
        match code {
            Code::Ok => HeaderValue::from_static("0"),
            code => HeaderValue::from(code as u16),
        },
    );
    if !why.is_empty()
        && let Ok(value) = HeaderValue::from_str(why)
    {
        trailers.insert(GRPC_MESSAGE, value);
    }
    let body = Full::new(message.unwrap_or_default()).with_trailers(ready(Some(Ok(trailers))));
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(flag: u8, declared: u32, message: &[u8]) -> Bytes {
        let mut b = vec![flag];
        b.extend_from_slice(&declared.to_be_bytes());
        b.extend_from_slice(message);
        Bytes::from(b)
    }

    #[test]
    fn one_uncompressed_message_is_the_request() {
        assert_eq!(
            frame(&framed(0, 3, b"abc")).expect("one message"),
            Bytes::from_static(b"abc")
        );
        assert_eq!(
            frame(&framed(0, 0, b"")).expect("one empty message"),
            Bytes::new()
        );
    }

    #[test]
    fn anything_else_is_refused_with_a_status() {
        let code = |body: Bytes| frame(&body).expect_err("refused").0 as u16;
        assert_eq!(
            code(Bytes::from_static(b"\0\0\0")),
            Code::InvalidArgument as u16
        );
        assert_eq!(code(framed(1, 3, b"abc")), Code::Unimplemented as u16);
        assert_eq!(code(framed(0, 4, b"abc")), Code::InvalidArgument as u16);
        assert_eq!(code(framed(0, 2, b"abc")), Code::InvalidArgument as u16);
    }
}
