//! A do-nothing ext_authz server that allows every request. Bench-only: it measures what Envoy's
//! ext_authz protocol itself costs, the ceiling any authorizer is compared against. It is not a mode of
//! the real server and must never front a real service.

use std::net::SocketAddr;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse,
};
use envoy_types::ext_authz::v3::{CheckResponseExt, OkHttpResponseBuilder};
use tonic::{Request, Response, Status};

struct AllowAll;

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(
        &self,
        _request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let mut response = CheckResponse::new();
        response.set_status(Status::ok("allowed"));
        response.set_http_response(OkHttpResponseBuilder::new());
        Ok(Response::new(response))
    }
}

pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::warn!(addr = %listen, "do-nothing ext_authz server (bench only) listening");
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(AllowAll))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            edgemesh_core::shutdown_signal(),
        )
        .await?;
    Ok(())
}
